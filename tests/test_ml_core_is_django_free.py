"""The ML core imports TensorFlow and numpy, never Django; training never imports inference."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING_CORE = [
    "training.nets.config",
    "training.nets.builders",
    "training.nets.losses",
    "training.nets.data",
    "training.nets.layouts",
    "training.nets.matching",
    "training.nets.samples",
    "training.nets.folds",
    "training.nets.metrics",
    "training.nets.provenance",
    "training.nets.detection",
    "training.nets.classifier",
    "training.nets.checkpoints",
    "training.nets.fit",
    "training.nets.predict",
    "training.nets.pretrain",
    "training.nets.lungs",
    "training.cli",
    "training.cli.common",
    "training.cli.evaluate",
    "training.cli.plotting",
    "training.cli.progress",
    "training.cli.report",
    "training.cli.sweep",
    "training.cli.train",
]
CORE = [
    *TRAINING_CORE,
    "inference.maps",
    "inference.maps.colour",
    "inference.maps.extent",
    "inference.maps.gradcam",
    "inference.maps.probability",
    "inference.cli",
    "annotation.imaging",
    "annotation.phantoms",
    "annotation.exporting",
    "annotation.screening",
    "annotation.agreement",
    "annotation.replay.sim",
    "annotation.replay.plots",
]
APP_MODULES = ("models", "services", "selectors", "tasks", "views", "apis", "forms", "admin")


def _loaded_after_importing(modules: list[str]) -> list[str]:
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('LOADED=' + ','.join(sorted(sys.modules)))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    [loaded] = [line for line in out.stdout.splitlines() if line.startswith("LOADED=")]
    return loaded.removeprefix("LOADED=").split(",")


def test_core_modules_never_import_django_or_app_modules():
    loaded = _loaded_after_importing(CORE)
    django = [m for m in loaded if m == "django" or m.startswith("django.")]
    assert django == [], f"Django imported by the ML core: {django}"
    apps = [
        m
        for m in loaded
        if m.split(".")[0] in ("annotation", "training", "inference")
        and m.split(".")[-1] in APP_MODULES
    ]
    assert apps == [], f"app modules imported by the ML core: {apps}"


def test_training_never_imports_inference():
    loaded = _loaded_after_importing(TRAINING_CORE)
    leaked = [m for m in loaded if m == "inference" or m.startswith("inference.")]
    assert leaked == [], f"training imports inference: {leaked}"
