"""Exports and round statistics at QaTa scale, through a real gunicorn and a real Celery worker.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python bench/export_scale.py [--sizes 1000 120000]

**Erases that database.** For each size it seeds (bench/seed_scale.py) that many images with
a fully decided Stage II round (8,800 items at 120 K), then:

- times `round_statistics` on that round in this process (best and median of 20 calls);
- starts gunicorn (one sync worker) and a Celery worker (solo pool, queue `default`), POSTs
  /api/exports/ {"accepted_only": true} as the data-team user and follows it to the end:
  request latency, status code, time until the zip is ready, images in it, and the resident
  memory of the web worker and of the Celery worker before the request and at their peak
  (VmHWM; the growth is what the export cost).

The seeded rows share a few stored PNGs; here they are replaced by a tiny PNG, so that a 120 K
export measures the database work and the zip's bookkeeping, not copying gigabytes of files.
Works on the code before the change too (there the request builds the rows itself).
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A signed-in session, as the export page has: a session cookie and its CSRF token
    (Basic auth would hash the password on every request, which costs more than the API)."""

    def __init__(self, base: str) -> None:
        self.base, self.jar = base, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def _csrf(self) -> str:
        return next(c.value for c in self.jar if c.name == "csrftoken")

    def sign_in(self, username: str, password: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.opener.open(f"{self.base}/accounts/login/", timeout=30).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        form = urllib.parse.urlencode(
            {"username": username, "password": password, "csrfmiddlewaretoken": self._csrf()}
        ).encode()
        self.opener.open(f"{self.base}/accounts/login/", data=form, timeout=30).read()
        if not any(c.name == "sessionid" for c in self.jar):
            raise SystemExit("could not sign in")

    def request(self, path: str, body: dict | None = None) -> tuple[int, dict | list]:
        req = urllib.request.Request(
            self.base + path,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json", "X-CSRFToken": self._csrf()},
            method="POST" if body is not None else "GET",
        )
        with self.opener.open(req, timeout=600) as resp:
            return resp.status, json.loads(resp.read())


def _tiny_files(media_root: Path) -> None:
    import numpy as np

    from annotation import imaging

    tiny = imaging.encode_png(np.zeros((8, 8), np.uint8))
    for path in list(media_root.glob("display/scale_*.png")) + list(media_root.glob("masks/*.png")):
        path.write_bytes(tiny)


def statistics_time(round_id: int) -> str:
    from annotation.models import Round
    from annotation.selectors import round_statistics

    rnd = Round.objects.get(pk=round_id)
    round_statistics(rnd)
    times = []
    for _ in range(20):
        started = time.perf_counter()
        stats = round_statistics(rnd)
        times.append(time.perf_counter() - started)
    return (
        f"round_statistics on {stats['items']['total']} items / {stats['decisions']} decisions: "
        f"best {min(times) * 1000:.1f} ms, median {statistics.median(times) * 1000:.1f} ms"
    )


def export_once(out: dict, env: dict[str, str], repeat: int = 2) -> str:
    from config.celery import app

    app.control.purge()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "-w", "1", "-b", f"127.0.0.1:{port}"]
        + ["--timeout", "900", "--log-level", "warning"],
        cwd=ROOT,
        env=env,
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-P", "solo"]
        + ["--loglevel", "WARNING", "--without-heartbeat", "--without-gossip"],
        cwd=ROOT,
        env=env,
    )
    try:
        browser = Browser(base)
        browser.sign_in(out["data"], out["password"])
        browser.request("/api/exports/")
        time.sleep(6)  # the worker connects and imports the apps
        (web_pid,) = _children(web.pid)
        web_before, worker_before = _mb(web_pid, "VmRSS"), _mb(worker.pid, "VmRSS")
        # Twice by default: the first request also opens the web process's broker connection.
        runs = []
        for _ in range(repeat):
            started = time.perf_counter()
            code, body = browser.request("/api/exports/", {"accepted_only": True})
            latency = time.perf_counter() - started
            while body["status"] not in ("done", "failed"):
                time.sleep(0.25)
                _, body = browser.request(f"/api/exports/{body['uuid']}/")
            runs.append((code, latency, body["status"], time.perf_counter() - started))
        web_peak, worker_peak = _mb(web_pid, "VmHWM"), _mb(worker.pid, "VmHWM")
        return (
            "; ".join(
                f"POST {code} in {latency * 1000:.0f} ms, {status} after {ready:.1f} s"
                for code, latency, status, ready in runs
            )
            + f"\n    {body['image_count']} images, "
            f"zip {body['size'] / 1e6:.1f} MB\n"
            f"    web worker RSS    before {web_before:6.0f} MB   peak {web_peak:6.0f} MB\n"
            f"    celery worker RSS before {worker_before:6.0f} MB   peak {worker_peak:6.0f} MB"
        )
    finally:
        for proc in (web, worker):
            proc.terminate()
        for proc in (web, worker):
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 120_000])
    parser.add_argument("--repeat", type=int, default=2, help="exports per size")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    var = Path(os.environ.setdefault("MASKLOOP_VAR_DIR", tempfile.mkdtemp(prefix="maskloop-x-")))
    from bench.benchenv import setup_django

    setup_django()
    from django.conf import settings
    from django.core.management import call_command

    from bench.seed_scale import seed

    call_command("migrate", verbosity=0)
    env = {**os.environ, "MASKLOOP_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "config.settings"}
    for size in args.sizes:
        covid = min(9000, size // 2)
        out = seed(
            images=size,
            covid=covid,
            items=min(8800, covid),
            candidates=5,
            mds=20,
            decided=1.0,
            log=lambda *a: None,
        )
        _tiny_files(Path(settings.MEDIA_ROOT))
        print(f"{size} images (load {', '.join(f'{x:.2f}' for x in os.getloadavg())})")
        print(f"  {statistics_time(out['round_id'])}")
        print(f"  export: {export_once(out, env, args.repeat)}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
