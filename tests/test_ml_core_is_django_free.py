"""The ML core imports TensorFlow and numpy, never Django."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = [
    "training.nets.config",
    "training.nets.builders",
    "training.nets.losses",
    "training.nets.data",
    "training.nets.folds",
    "training.nets.metrics",
    "training.nets.fit",
    "training.nets.predict",
    "inference.maps",
    "annotation.imaging",
    "annotation.phantoms",
    "annotation.exporting",
]


def test_core_modules_never_import_django():
    code = (
        "import sys, importlib\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))\n"
        "print('LEAKED=' + ','.join(leaked))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    [leaked] = [line for line in out.stdout.splitlines() if line.startswith("LEAKED=")]
    assert leaked == "LEAKED=", f"Django imported by the ML core: {leaked}"
