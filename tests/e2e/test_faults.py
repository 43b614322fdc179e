"""Fault injection with real processes: a training task delivered twice, a training worker
killed mid-training, Redis stopped while a round starts. `celery beat` runs the reconciler every
2 s with a stale limit of 10 s, and every epoch's checkpoint is mirrored to storage."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from annotation import services
from annotation.models import GroundTruth, Mask, Round
from config.celery import publish
from config.models import OutboxMessage
from tests.conftest import make_user
from tests.workers import Workers, celery_workers
from training.models import ModelVersion, TrainingRun

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TIMEOUT = 10 * 60  # the machine may be shared; a round takes about a minute alone
FAULTS = {
    "MASKLOOP_CHECKPOINT_SECONDS": "0",  # every epoch's checkpoint reaches storage
    "MASKLOOP_HEARTBEAT_SECONDS": "1",
    "MASKLOOP_HEARTBEAT_STALE_SECONDS": "10",
    "MASKLOOP_PREDICTION_STALE_SECONDS": "300",  # a prediction reports once, at its end, here
    "MASKLOOP_RECONCILE_SECONDS": "2",
    "MASKLOOP_OUTBOX_GRACE_SECONDS": "2",
}
EPOCHS = 20


@pytest.fixture
def stage_two(make_image):
    """4 COVID-19 images with accepted masks and 4 without: Stage II of one network trains
    one run on the first and predicts the others."""
    for _ in range(4):
        image = make_image(size=32)
        mask = services.mask_create(image=image, mask=image.truth, source=Mask.Source.IMPORTED)
        GroundTruth.objects.create(image=image, mask=mask)
        services.image_refresh_status(image=image)
    for _ in range(4):
        make_image(size=32)
    return {
        "stage": "II",
        "preset": "tiny",
        "epochs": EPOCHS,
        "networks": [["unet", "densenet121"]],
    }


def wait_until(check, what: str, workers: Workers, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert workers.alive(), f"a process died; see {workers.logs}"
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s; see {workers.logs}")


def reviewing(number: int, workers: Workers) -> Round:
    def check():
        rnd = Round.objects.get(number=number)
        assert rnd.status != Round.Status.FAILED, rnd.failure_reason
        return rnd if rnd.status == Round.Status.REVIEWING else None

    return wait_until(check, f"round {number} reviewing", workers)


def training(number: int, workers: Workers, epoch: int) -> TrainingRun:
    """The round's run once it trains past `epoch` (and so has mirrored a checkpoint)."""
    run = TrainingRun.objects.filter(round__number=number)
    return wait_until(
        lambda: run.filter(status=TrainingRun.Status.TRAINING, epoch__gte=epoch).first(),
        f"training past epoch {epoch}",
        workers,
    )


def test_a_second_delivery_gives_way_and_a_killed_worker_is_replaced_from_its_checkpoint(
    stage_two, api, media_root
):
    """Two training workers: the second delivery of a training task, while the first trains,
    does nothing; then the worker that trains is killed with -9, the reconciler sends the run
    again, and the other worker resumes it from the last mirrored checkpoint."""
    admin = make_user("boss", "admin")
    with celery_workers("faults-kill", media_root, env=FAULTS, beat=True) as workers:
        workers.start("training-2", "training")
        response = api(admin).post("/api/rounds/", stage_two, format="json")
        assert response.status_code == 201, response.content
        number = response.json()["number"]
        run = training(number, workers, epoch=2)
        held_by = run.worker

        publish("training.tasks.train", [run.pk, run.attempt])  # the same delivery again
        logs = [workers.log("training"), workers.log("training-2")]
        wait_until(
            lambda: sum(log.read_text().count("does nothing") for log in logs) == 1,
            "the second delivery to give way",
            workers,
        )
        run.refresh_from_db()
        assert (run.worker, run.attempt, run.status) == (held_by, 0, TrainingRun.Status.TRAINING)
        assert ModelVersion.objects.count() == 0

        run = training(number, workers, epoch=3)
        mirrored = Path(media_root) / "checkpoints" / f"run-{run.pk}"
        assert any(mirrored.rglob("ckpt-*")), "no checkpoint was mirrored to storage"
        holder = next(
            r
            for r, log in zip(("training", "training-2"), logs, strict=True)
            if "does nothing" not in log.read_text()
        )
        workers.kill(holder)
        killed_at = TrainingRun.objects.get(pk=run.pk).epoch
        assert killed_at < EPOCHS, "the training ended before the kill; make it longer"

        rnd = reviewing(number, workers)
        run.refresh_from_db()
        assert run.status == TrainingRun.Status.SUCCEEDED
        assert run.attempt == 1 and run.worker != held_by
        mv = ModelVersion.objects.get(run=run)
        assert mv.metrics["attempt"] == 1
        assert 0 < mv.metrics["resumed_at_epoch"] <= killed_at
        assert len(mv.metrics["train_loss"]) == EPOCHS
        assert ModelVersion.objects.filter(run__round=rnd).count() == 1
        survivor = logs[1] if holder == "training" else logs[0]
        assert f"run {run.pk}: attempt 1 resumed at epoch" in survivor.read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def own_redis(tmp_path) -> Iterator[tuple[str, Callable, Callable]]:
    """A Redis server of this test's own, with append-only persistence as in the compose file,
    that the test stops and starts (never the shared one)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    port, folder = free_port(), tmp_path / "redis"
    folder.mkdir()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
    command += ["--appendonly", "yes", "--save", ""]
    procs: list[subprocess.Popen] = []

    def start():
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("redis-server did not start")

    def stop():
        procs[-1].terminate()  # SIGTERM: Redis writes its append-only file and exits
        procs[-1].wait(timeout=20)

    start()
    yield f"redis://127.0.0.1:{port}/0", start, stop
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def answers(url: str) -> bool:
    try:
        return http(url, "boss")[0] == 200
    except urllib.error.URLError:  # not listening yet
        return False


CSRF_TOKEN = "faultsfaultsfaultsfaultsfaults12"  # 32 characters, as Django's masked form


def session_cookie(username: str) -> str:
    """A signed-in session for `username` in the shared database (the API takes sessions
    only), as the web process will read it."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    user = User.objects.get(username=username)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"sessionid={session.session_key}; csrftoken={CSRF_TOKEN}"


def http(url: str, user: str, body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body is not None else None,
        headers={
            "Cookie": session_cookie(user),
            "X-CSRFToken": CSRF_TOKEN,
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, {"body": error.read().decode(errors="replace")[:2000]}


def test_a_round_started_while_redis_is_down_answers_201_and_trains_once_redis_is_back(
    stage_two, own_redis, media_root
):
    broker, redis_start, redis_stop = own_redis
    make_user("boss", "admin")
    port = free_port()
    with celery_workers("faults-redis", media_root, env=FAULTS, broker=broker, beat=True) as w:
        manage = [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"]
        w.spawn("web", manage, w.env)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{base}/api/rounds/"), "the web server", w, 120)

        redis_stop()
        # A few epochs: what this test waits for is the outbox, not a training to kill.
        status, body = http(f"{base}/api/rounds/", "boss", {**stage_two, "epochs": 3})
        assert status == 201, body
        run = TrainingRun.objects.get(round__number=body["number"])
        assert run.status == TrainingRun.Status.QUEUED
        waiting = OutboxMessage.objects.get(task_name="training.tasks.train", args=[run.pk, 0])
        assert waiting.sent_at is None and waiting.last_error, "the web process never tried"
        time.sleep(3)
        assert http(f"{base}/api/rounds/", "boss")[0] == 200  # the site keeps answering
        redis_start()

        rnd = reviewing(body["number"], w)
        assert ModelVersion.objects.filter(run__round=rnd).count() == 1
        waiting.refresh_from_db()
        assert waiting.sent_at is not None
        assert not OutboxMessage.objects.filter(sent_at=None).exists()
