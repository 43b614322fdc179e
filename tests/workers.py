"""Real `celery worker` (and `celery beat`) processes for the tests that need the whole stack
(e2e and browser)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import redis
from django.conf import settings
from django.db import connection

ARTIFACTS = Path(settings.BASE_DIR) / "artifacts"

# The workers, as in production: `training` with a fresh child per task, and `inference` +
# `default` staying warm.
QUEUES = {
    "training": ("training", ["--max-tasks-per-child", "1"]),
    "default": ("inference,default", []),
}


class Workers:
    def __init__(self, name: str, media_root: Path, env: dict[str, str], hosts_root: Path | None):
        self.name = name
        self.media_root = Path(media_root)
        self.env = env
        self.hosts_root = hosts_root
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: list[IO] = []
        self.logs = f"artifacts/{name}-*.log"
        self.opened: set[str] = set()
        # Per worker, when each is its own host: the folder holding its media/, work/, cache/.
        self.hosts: dict[str, Path] = {}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def log(self, role: str) -> Path:
        kind = role if role in ("beat", "web") else f"worker-{role}"
        return ARTIFACTS / f"{self.name}-{kind}.log"

    def spawn(self, role: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Starts one more process of the stack (e.g. a web server) beside the workers."""
        log = self.log(role).open("a" if role in self.opened else "w")  # a restart appends
        self.opened.add(role)
        self.files.append(log)
        # A session of its own, so that `kill` reaches the worker's pool children too.
        proc = subprocess.Popen(
            command,
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[role] = proc
        return proc

    def start(self, role: str, queue_name: str | None = None) -> subprocess.Popen:
        """Starts a worker named `role` for `queue_name`'s queues (QUEUES; by default the
        queue named like the role), e.g. a second training worker as start("training-2",
        "training")."""
        queues, extra = QUEUES[queue_name or role]
        command = [
            *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues),
            *("-n", f"{role}@{self.name}", "--concurrency", "1", "--prefetch-multiplier", "1"),
            *("--without-gossip", "--without-mingle", "-l", "info", *extra),
        ]
        own = dict(self.env)
        if self.hosts_root is not None:
            host = self.hosts[role] = Path(self.hosts_root) / role
            for folder, variable in [
                ("media", "MASKLOOP_MEDIA_ROOT"),
                ("work", "MASKLOOP_WORK_DIR"),
                ("cache", "MASKLOOP_CACHE_DIR"),
            ]:
                (host / folder).mkdir(parents=True, exist_ok=True)
                own[variable] = str(host / folder)
        return self.spawn(role, command, own)

    def start_beat(self, schedule: Path) -> subprocess.Popen:
        """Starts `celery beat`, which sends the reconciler every MASKLOOP_RECONCILE_SECONDS."""
        command = [
            *(sys.executable, "-m", "celery", "-A", "config", "beat"),
            *("-s", str(schedule), "-l", "info"),
        ]
        return self.spawn("beat", command, dict(self.env))

    def kill(self, role: str) -> None:
        """kill -9 of a worker and its pool children: no warm shutdown, nothing acknowledged."""
        proc = self.procs.pop(role)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self.files:
            log.close()


@contextlib.contextmanager
def celery_workers(
    name: str,
    media_root: Path,
    *,
    env: dict[str, str] | None = None,
    hosts_root: Path | None = None,
    broker: str | None = None,
    beat: bool = False,
) -> Iterator[Workers]:
    """Two `celery worker` processes, as in production, on the test database and the test
    broker (flushed first): `training` with a fresh child per task, and `inference` + `default`.
    Their logs go to artifacts/<name>-worker-<role>.log (beat's to <name>-beat.log); they are
    stopped on the way out.

    Args:
        name: names the workers and their logs.
        media_root: the MEDIA_ROOT the workers share with the test process.
        env: more environment for the workers (e.g. an object store's MASKLOOP_S3_*).
        hosts_root: when given, each worker plays a host of its own: an empty MEDIA_ROOT,
            MASKLOOP_WORK_DIR and MASKLOOP_CACHE_DIR under hosts_root/<role>/, so what it
            shares with the others is only the database, the broker and `env`'s storage.
        broker: another Redis URL than the test broker (a test's own Redis server).
        beat: also run `celery beat`, which has the reconciler run periodically.
    """
    broker = broker or settings.CELERY_BROKER_URL
    if not broker.startswith("redis://"):
        pytest.fail(f"the {name} tests need CELERY_BROKER_URL=redis://… (make test sets it)")
    redis.Redis.from_url(broker).flushdb()
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    shared = {
        **os.environ,
        "DATABASE_URL": f"postgres://{auth}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "CELERY_BROKER_URL": broker,
        "MASKLOOP_MEDIA_ROOT": str(media_root),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    shared.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    ARTIFACTS.mkdir(exist_ok=True)
    workers = Workers(name, Path(media_root), shared, hosts_root)
    try:
        for role in QUEUES:
            workers.start(role)
        if beat:
            workers.start_beat(Path(media_root).parent / f"{name}-celerybeat-schedule")
        yield workers
    finally:
        workers.stop()
