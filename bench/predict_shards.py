"""Stage II prediction shared by inference workers: 1 vs 2 `celery worker` processes on the same
shards of a trained tiny model. Prints figures (no assertion).

    .venv/bin/python bench/predict_shards.py [--images 512] [--image-size 256] [--shard 64]

Needs PostgreSQL and Redis. It uses (and empties) the database of DATABASE_URL (default
postgres://postgres@127.0.0.1:5432/maskloop_shard, created if missing) and the Redis database
of CELERY_BROKER_URL (default redis://127.0.0.1:6379/4, flushed), with media in a temporary
folder. Steps:

1. seeds 2 accepted COVID-19 images and `--images` phantom CXRs without a mask, and starts a
   Stage II round of one U-Net (DenseNet-121, the `--preset`, tiny by default);
2. a real training worker trains it (or `--weights FILE`, a tiny U-Net's weights this script
   trained before, skips the training) while a real `default` worker applies the reports,
   which sends its shards; those are dropped, and the run is copied (same weights, same
   targets) so that both measurements predict the same images with the same network;
3. for 1, then 2 inference workers (`-Q inference`, concurrency 1 each): each worker is
   started and warmed up first (it predicts 24 images of another copy, sent to its own
   queue, so it has built and traced the network, as a worker has after its first shard);
   then the clock starts, `predictions_send` sends the run's shards, and it stops when the
   run has succeeded (every shard predicted, stored and reported).

Prints images/s for each, the speed-up (goal ≥ 1.8×) and the load average. Unpinned, one
worker already fills both cores of a 2-core machine (TensorFlow's threads and the pipeline's
pool), so a second one has little left to take; `--pin` gives inference worker i CPU i alone,
as if each had a machine (or an accelerator) of its own, which is what the fan-out is for.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/maskloop_shard"
DEFAULT_BROKER = "redis://127.0.0.1:6379/4"


def ensure_database(url: str) -> None:
    import psycopg2
    from psycopg2 import sql

    base, _, name = url.rpartition("/")
    conn = psycopg2.connect(f"{base}/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def start_worker(
    name: str, queues: str, env: dict[str, str], logs: Path, core: int | None = None
) -> subprocess.Popen:
    """A `celery worker` of concurrency 1 on `queues`; with `core`, pinned to that CPU."""
    log = (logs / f"{name}.log").open("a")
    pin = None if core is None else (lambda: os.sched_setaffinity(0, {core}))
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues),
            *("-n", f"{name}@bench", "--concurrency", "1", "--prefetch-multiplier", "1"),
            *("--without-gossip", "--without-mingle", "-l", "info"),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=pin,
    )


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_ready(names: list[str], timeout: float = 180) -> None:
    from config.celery import app

    deadline = time.monotonic() + timeout
    wanted = {f"{n}@bench" for n in names}
    while time.monotonic() < deadline:
        answered = {k for reply in app.control.ping(timeout=1.0) for k in reply}
        if wanted <= answered:
            return
    raise SystemExit(f"workers {sorted(wanted)} did not answer within {timeout:.0f} s")


def wait_status(run_id: int, statuses: set[str], timeout: float) -> str:
    from training.models import TrainingRun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = TrainingRun.objects.values_list("status", flat=True).get(pk=run_id)
        if status in statuses:
            return status
        time.sleep(0.2)
    raise SystemExit(f"run {run_id} still not {statuses} after {timeout:.0f} s")


def wait_predicted(run_id: int, count: int, timeout: float) -> None:
    from annotation.models import Mask

    deadline = time.monotonic() + timeout
    while Mask.objects.filter(model_version__run_id=run_id).count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id}: warm-up not done after {timeout:.0f} s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="Stage II targets")
    parser.add_argument("--image-size", type=int, default=256, dest="image_size")
    parser.add_argument("--shard", type=int, default=64, help="MASKLOOP_PREDICT_SHARD")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin inference worker i to CPU i, as if each had a machine of its own",
    )
    parser.add_argument("--weights", type=Path, help="trained tiny U-Net weights (.weights.h5)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="maskloop-shards-"))
    db = os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    broker = os.environ.setdefault("CELERY_BROKER_URL", DEFAULT_BROKER)
    os.environ.update(
        MASKLOOP_VAR_DIR=str(tmp), MASKLOOP_PREDICT_SHARD=str(args.shard), PYTHONUNBUFFERED="1"
    )
    ensure_database(db)
    setup_django()
    import redis
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    redis.Redis.from_url(broker).flushdb()

    from django.contrib.auth import get_user_model

    from annotation import imaging, services
    from annotation.models import GroundTruth, ImageClass, Mask, Round
    from annotation.phantoms import make_phantom
    from annotation.services import runs
    from config.celery import app
    from training.models import ModelVersion, TrainingRun

    print(
        f"# predict_shards: {args.images} phantom CXRs of {args.image_size} px, shards of "
        f"{args.shard}, preset {args.preset}, {os.cpu_count()} CPU(s), load average "
        f"{os.getloadavg()}",
        flush=True,
    )
    started = time.perf_counter()
    admin = get_user_model().objects.create_user("bench-admin", password="x")
    for n in range(args.images + 2):
        phantom = make_phantom(n, size=args.image_size, covid=True)
        image = services.image_create(
            data=imaging.encode_png(phantom.image),
            name=f"bench_{n:05d}.png",
            source="bench",
            image_class=ImageClass.COVID,
            patient_id=f"P{n}",
        )
        if n < 2:
            mask = services.mask_create(
                image=image, mask=phantom.infection, source=Mask.Source.IMPORTED
            )
            GroundTruth.objects.create(image=image, mask=mask)
            services.image_refresh_status(image=image)
    with transaction.atomic():
        rnd = services.round_start(
            stage=Round.Stage.STAGE_II,
            started_by=admin,
            preset=args.preset,
            networks=[("unet", "densenet121")],
        )
    run = rnd.training_runs.get()
    print(f"seeded in {time.perf_counter() - started:.0f} s; training run {run.pk}", flush=True)

    env = {**os.environ}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    logs = tmp / "logs"
    logs.mkdir()
    started = time.perf_counter()
    if args.weights:
        from django.core.files import File

        mv = ModelVersion(
            run=run, arch="unet", encoder="densenet121", config=run.config, data_version="bench"
        )
        with args.weights.open("rb") as fh:
            mv.weights.save("bench-unet.weights.h5", File(fh), save=False)
        mv.save()
        TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.PREDICTING)
        setup = [start_worker("reports", "default", env, logs)]
    else:
        setup = [
            start_worker("reports", "default", env, logs),
            start_worker("training", "training", env, logs),
        ]
    try:
        wait_status(run.pk, {TrainingRun.Status.PREDICTING, TrainingRun.Status.FAILED}, 1800)
        stop(setup[1:])
        run.refresh_from_db()
        if run.status != TrainingRun.Status.PREDICTING:
            raise SystemExit(f"training failed: {run.failure_reason}")
        mv = ModelVersion.objects.get(run=run)
        if not args.weights:
            kept = Path(tempfile.gettempdir()) / f"predict-shards-{args.preset}-unet.weights.h5"
            kept.write_bytes(mv.weights.read())
            print(
                f"trained in {time.perf_counter() - started:.0f} s (weights kept: --weights "
                f"{kept})",
                flush=True,
            )
        redis.Redis.from_url(broker).delete("inference")  # its shards: sent again below
        copies = []
        for _ in [*args.workers[1:], "warm-up"]:
            copy = TrainingRun.objects.get(pk=run.pk)
            copy.pk = None
            copy.save()
            ModelVersion.objects.create(
                run=copy,
                arch=mv.arch,
                encoder=mv.encoder,
                config=mv.config,
                weights=mv.weights.name,
                data_version=mv.data_version,
            )
            copies.append(copy)

        warm = copies.pop()
        warm_targets, warmed = sorted(warm.target_image_ids), 0
        results = []
        for count, target in zip(args.workers, [run, *copies], strict=True):
            names = [f"inference{i}" for i in range(count)]
            procs = [
                start_worker(n, f"inference,warm-{n}", env, logs, i if args.pin else None)
                for i, n in enumerate(names)
            ]
            try:
                wait_ready(names)
                for name in names:  # fresh images each time, or the shard would skip them
                    shard, warmed = warm_targets[warmed : warmed + 24], warmed + 24
                    app.send_task(
                        "inference.tasks.predict", args=[warm.pk, shard], queue=f"warm-{name}"
                    )
                wait_predicted(warm.pk, warmed, args.timeout)
                load = os.getloadavg()
                started = time.perf_counter()
                with transaction.atomic():
                    target = TrainingRun.objects.select_related("round").get(pk=target.pk)
                    shards = runs.predictions_send(target)
                status = wait_status(
                    target.pk,
                    {TrainingRun.Status.SUCCEEDED, TrainingRun.Status.FAILED},
                    args.timeout,
                )
                seconds = time.perf_counter() - started
            finally:
                stop(procs)
            target.refresh_from_db()
            if status != TrainingRun.Status.SUCCEEDED:
                raise SystemExit(f"prediction failed: {target.failure_reason}")
            predicted = Mask.objects.filter(model_version__run=target).count()
            results.append((count, len(shards), predicted, seconds, load, os.getloadavg()))
            print(
                f"{count} inference worker(s): {predicted} images in {len(shards)} shards, "
                f"{seconds:.1f} s, {predicted / seconds:.2f} images/s; load average before "
                f"{load}, after {os.getloadavg()}",
                flush=True,
            )
    finally:
        stop(setup)

    print("\n| inference workers | shards | images | seconds | images/s | speed-up |")
    print("|---|---|---|---|---|---|")
    base = results[0][2] / results[0][3]
    for count, shards, predicted, seconds, _, _ in results:
        rate = predicted / seconds
        speed_up = rate / base
        print(f"| {count} | {shards} | {predicted} | {seconds:.1f} | {rate:.2f} | {speed_up:.2f} |")
    print(f"# goal ≥ 1.8× with 2 workers; load average now {os.getloadavg()}; logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
