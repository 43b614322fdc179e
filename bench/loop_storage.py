"""The loop on local disk vs on SeaweedFS, same run: import, training, prediction and export.

    .venv/bin/python bench/loop_storage.py [--covid 12] [--controls 4] [--drawn 6] [--size 64]
        [--folds 2] [--epochs 5] [--exports 3] [--warm-cache]

Runs the same small Stage I twice, each time in a fresh child process so that both pay the same
TensorFlow start-up: once with media in a local folder (the demo), once on S3-compatible object
storage (SeaweedFS's `weed server -s3`, started here as the tests start it, tests/objectstore.py),
configured exactly as in production through MASKLOOP_S3_*. Each child has its own throw-away
SQLite database, media, work and cache folders under a temporary folder.

The same run: the same phantoms (seeded), MD drawings, preset ("tiny", 5 epochs instead of its
30 by default, to keep the bench near 8 minutes on a loaded 2-core machine), network (U-Net on
DenseNet121), folds, seed and code. Celery runs eagerly in the child (as the tests'
`eager_tasks`): one process plays the web host and the workers, and every task is timed by
Celery's task_prerun / task_postrun signals. Reports that a task sends run inside it, so each
phase is the task's own time without the tasks nested in it:

  import      annotation.ingest.ingest_folder + the MD drawings (not a task: timed around it)
  training    training.tasks.train (local copies of the inputs, fit, weights stored)
  prediction  inference.tasks.predict (local copies, predict, masks stored)
  reports     annotation.tasks.run_* (the workers' reports applied by annotation)
  review      one MD picks the first candidate of every item (not a task)
  export      annotation.tasks.export_build, median of --exports builds of all images

Unless --warm-cache, the local cache (settings.MASKLOOP_CACHE_DIR, used only on S3) is emptied
before every training, prediction and export task, as on a worker host that has not seen the
files; prints the figures, the ratio s3 / local, and the load average before and after each
variant (the machine may be shared).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402

PHASES = ("import", "training", "prediction", "reports", "review", "export")
# Tasks whose host would start without the files: their cache is emptied first (--warm-cache off).
WORKER_TASKS = ("training.tasks.train", "inference.tasks.predict", "annotation.tasks.export_build")


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class TaskClock:
    """Each task's own seconds, by name, without the tasks run eagerly inside it."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir
        self.own: dict[str, list[float]] = defaultdict(list)
        self.stack: list[list[float]] = []  # [started, seconds of nested tasks]

    def connect(self) -> None:
        from celery.signals import task_postrun, task_prerun

        task_prerun.connect(self.prerun, weak=False)
        task_postrun.connect(self.postrun, weak=False)

    def prerun(self, task=None, **_) -> None:
        if self.cache_dir is not None and task.name in WORKER_TASKS:
            shutil.rmtree(self.cache_dir, ignore_errors=True)
        self.stack.append([time.perf_counter(), 0.0])

    def postrun(self, task=None, **_) -> None:
        started, nested = self.stack.pop()
        elapsed = time.perf_counter() - started
        self.own[task.name].append(elapsed - nested)
        if self.stack:
            self.stack[-1][1] += elapsed


def child(variant: str, folder: Path, args: argparse.Namespace) -> None:
    """One variant of the run; prints one JSON line of figures."""
    load_before = loadavg()
    setup_django()
    from django.conf import settings
    from django.core.management import call_command

    from annotation import services
    from annotation.demo import demo_dataset_write, demo_md_masks
    from annotation.ingest import ingest_folder
    from annotation.models import Export, ReviewItem, Round
    from config import storage
    from config.celery import app
    from tests.conftest import make_user
    from training.models import TrainingRun

    call_command("migrate", verbosity=0)
    on_s3 = bool(settings.MASKLOOP_S3_ENDPOINT_URL)
    assert on_s3 == (variant == "s3"), "the child's storage is not the one asked for"
    app.loader.import_default_modules()  # registers every app's tasks, as a worker does
    app.conf.update(task_always_eager=True, task_eager_propagates=True)
    clock = TaskClock(None if args.warm_cache else Path(settings.MASKLOOP_CACHE_DIR))
    clock.connect()
    seconds: dict[str, float] = {}

    md, admin, analyst = make_user("md1", "md"), make_user("boss", "admin"), make_user("a", "data")
    started = time.perf_counter()
    cases = demo_dataset_write(
        folder / "cxr", n_covid=args.covid, n_control=args.controls, size=args.size
    )
    report = ingest_folder(folder / "cxr", source="phantoms")
    assert len(report.imported) == args.covid + args.controls and not report.rejected, report
    drawn = demo_md_masks(cases=cases, author=md, count=args.drawn, size=args.size)
    assert drawn == args.drawn
    seconds["import"] = time.perf_counter() - started

    started = time.perf_counter()
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin,
        folds=args.folds,
        preset="tiny",
        overrides={"epochs": args.epochs} if args.epochs else None,
        networks=[("unet", "densenet121")],
    )  # the runs train, predict and report on commit, eagerly, before this returns
    loop_wall = time.perf_counter() - started
    rnd.refresh_from_db()
    runs = list(rnd.training_runs.values_list("status", "failure_reason", "epochs"))
    assert rnd.status == Round.Status.REVIEWING, (rnd.status, rnd.failure_reason, runs)
    assert all(status == TrainingRun.Status.SUCCEEDED for status, _, _ in runs), runs

    started = time.perf_counter()
    for item in ReviewItem.objects.filter(round=rnd, status=ReviewItem.Status.OPEN):
        label = item.candidates.order_by("label").values_list("label", flat=True).first()
        services.decision_create(item=item, reviewer=md, choice=label, seconds=2.5)
    seconds["review"] = time.perf_counter() - started
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE, rnd.status

    digests = set()
    for _ in range(args.exports):
        export = services.export_request(requested_by=analyst, filters={"accepted_only": False})
        export = Export.objects.get(pk=export.pk)
        assert export.status == Export.Status.DONE, export.failure_reason
        with storage.open_file(export.file.name) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == export.sha256
        digests.add(export.sha256)
    assert len(digests) == 1, "the same data exported twice must give the same zip"

    own = clock.own
    seconds["training"] = sum(own["training.tasks.train"])
    seconds["prediction"] = sum(own["inference.tasks.predict"])
    seconds["reports"] = sum(
        sum(v) for k, v in own.items() if k.startswith("annotation.tasks.run_")
    )
    seconds["export"] = statistics.median(own["annotation.tasks.export_build"])
    media = Path(settings.MEDIA_ROOT)
    targets = rnd.training_runs.values_list("target_image_ids", flat=True)
    print(
        json.dumps(
            {
                "variant": variant,
                "seconds": seconds,
                "loop_wall": loop_wall,
                "runs": len(runs),
                "epochs": [e for _, _, e in runs],
                "predicted": sum(len(t) for t in targets),
                "export_bytes": export.size,
                "export_images": export.image_count,
                "local_media_files": sum(1 for p in media.rglob("*") if p.is_file())
                if media.is_dir()
                else 0,
                "load_before": load_before,
                "load_after": loadavg(),
            }
        )
    )


def run_child(variant: str, tmp: Path, extra_env: dict[str, str], argv: list[str]) -> dict:
    folder = tmp / variant
    (folder / "var").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MASKLOOP_S3_")},
        **extra_env,
        "MASKLOOP_VAR_DIR": str(folder / "var"),
        "CELERY_BROKER_URL": "memory://",  # eager: nothing is sent to a broker
    }
    env.pop("DATABASE_URL", None)  # a throw-away SQLite database under MASKLOOP_VAR_DIR
    for name in ("MASKLOOP_MEDIA_ROOT", "MASKLOOP_WORK_DIR", "MASKLOOP_CACHE_DIR"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--child", variant, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode:
        raise SystemExit(f"{variant} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covid", type=int, default=12, help="COVID-19 phantoms")
    parser.add_argument("--controls", type=int, default=4, help="control phantoms")
    parser.add_argument("--drawn", type=int, default=6, help="of them drawn by the MD")
    parser.add_argument("--size", type=int, default=64, help="phantom side in pixels")
    parser.add_argument("--folds", type=int, default=2, help="Stage I folds (one run each)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (0: the preset's 30)")
    parser.add_argument("--exports", type=int, default=3, help="export builds (median shown)")
    parser.add_argument("--warm-cache", action="store_true", help="keep the cache across tasks")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), args)
        return
    argv = sys.argv[1:]

    from tests.objectstore import seaweedfs

    tmp = Path(tempfile.mkdtemp(prefix="maskloop-loop-bench-"))
    started = time.perf_counter()
    try:
        results = {"local": run_child("local", tmp, {}, argv)}
        with seaweedfs(tmp / "seaweedfs") as store:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            results["s3"] = run_child("s3", tmp, store.env(prefix), argv)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    local, s3 = results["local"], results["s3"]
    assert s3["local_media_files"] == 0, "the S3 variant wrote to its MEDIA_ROOT"
    print(
        f"Stage I, {args.covid + args.controls} phantoms of {args.size} px "
        f"({args.drawn} drawn), preset tiny, unet/densenet121, {local['runs']} runs x "
        f"{local['epochs'][0]} epochs, {local['predicted']} predictions; export of "
        f"{local['export_images']} images, {local['export_bytes'] / 1e6:.2f} MB "
        f"(median of {args.exports}); cache {'warm' if args.warm_cache else 'emptied per task'}"
    )
    print(f"{'phase':<12} {'local s':>9} {'s3 s':>9} {'s3/local':>9}")
    for phase in PHASES:
        a, b = local["seconds"][phase], s3["seconds"][phase]
        print(f"{phase:<12} {a:>9.2f} {b:>9.2f} {b / a if a else float('nan'):>9.2f}")
    a, b = local["loop_wall"], s3["loop_wall"]
    print(f"{'loop wall':<12} {a:>9.2f} {b:>9.2f} {b / a:>9.2f}  (round_start → reviewing)")
    for r in (local, s3):
        print(f"load average {r['variant']:<5} before {r['load_before']}  after {r['load_after']}")
    print(f"bench wall {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
