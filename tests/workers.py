"""Real `celery worker` processes for the tests that need the whole stack (e2e and browser)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import connection

ARTIFACTS = Path(settings.BASE_DIR) / "artifacts"


class Workers:
    def __init__(
        self,
        procs: list[subprocess.Popen],
        media_root: Path,
        logs: str,
        hosts: dict[str, Path] | None = None,
    ):
        self.procs = procs
        self.media_root = media_root
        self.logs = logs
        # Per worker, when each is its own host: the folder holding its media/, work/, cache/.
        self.hosts = hosts or {}

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


@contextlib.contextmanager
def celery_workers(
    name: str,
    media_root: Path,
    *,
    env: dict[str, str] | None = None,
    hosts_root: Path | None = None,
) -> Iterator[Workers]:
    """Two `celery worker` processes, as in production, on the test database and the test
    broker (flushed first): `training` with a fresh child per task, and `inference` + `default`.
    Their logs go to artifacts/<name>-worker-*.log; they are stopped on the way out.

    Args:
        name: names the workers and their logs.
        media_root: the MEDIA_ROOT the workers share with the test process.
        env: more environment for the workers (e.g. an object store's MASKLOOP_S3_*).
        hosts_root: when given, each worker plays a host of its own: an empty MEDIA_ROOT,
            MASKLOOP_WORK_DIR and MASKLOOP_CACHE_DIR under hosts_root/<queue name>/, so what
            it shares with the others is only the database, the broker and `env`'s storage.
    """
    broker = settings.CELERY_BROKER_URL
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
    procs, logs, hosts = [], [], {}
    try:
        for queue_name, queues, extra in [
            ("training", "training", ["--max-tasks-per-child", "1"]),
            ("default", "inference,default", []),
        ]:
            log = (ARTIFACTS / f"{name}-worker-{queue_name}.log").open("w")
            logs.append(log)
            command = [
                *(sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues),
                *("-n", f"{queue_name}@{name}", "--concurrency", "1", "--prefetch-multiplier", "1"),
                *("--without-gossip", "--without-mingle", "-l", "info", *extra),
            ]
            own = dict(shared)
            if hosts_root is not None:
                host = hosts[queue_name] = Path(hosts_root) / queue_name
                for folder, variable in [
                    ("media", "MASKLOOP_MEDIA_ROOT"),
                    ("work", "MASKLOOP_WORK_DIR"),
                    ("cache", "MASKLOOP_CACHE_DIR"),
                ]:
                    (host / folder).mkdir(parents=True, exist_ok=True)
                    own[variable] = str(host / folder)
            procs.append(
                subprocess.Popen(
                    command,
                    cwd=settings.BASE_DIR,
                    env=own,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        yield Workers(procs, Path(media_root), f"artifacts/{name}-worker-*.log", hosts)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
