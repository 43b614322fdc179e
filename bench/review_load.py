"""A team of MDs reviewing at once: locust (headless, loopback only) against gunicorn on a
QaTa-sized PostgreSQL database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
        .venv/bin/python bench/review_load.py --users 20 --duration 120

Steps: seeds the database with bench/seed_scale.py (120,000 images, a Stage II round of 8,800
items × 5 candidates, MD users md01…; **the database is erased first**), starts gunicorn on
127.0.0.1 serving `--code` (default: this tree; point it at a worktree of another commit to
measure that code on the same seed), and runs bench/review_locust.py: each simulated MD is its own
signed-in user and loops next → item → CXR and candidate overlays (PNG) → 3–8 s of thinking →
decision. Prints p50 / p95 / p99 per endpoint, decisions stored per minute, the share of 409s,
and checks that every 201 is matched by exactly one Decision row (and no row lacks its 201).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import django_env  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ENDPOINTS = ["next", "item", "image png", "candidate png", "decision"]


def _git_rev(path: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _seed(args: argparse.Namespace, env: dict[str, str]) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "seed_scale.py"),
        "--images",
        str(args.images),
        "--covid",
        str(args.covid),
        "--items",
        str(args.items),
        "--candidates",
        str(args.candidates),
        "--mds",
        str(args.users),
    ]
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    print(f"seeded in {time.perf_counter() - started:.0f} s")
    return json.loads(out.strip().splitlines()[-1])


def _sessions(usernames: list[str]) -> dict[str, str]:
    """A signed-in session per MD, made here so that no password is hashed during the run."""
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.sessions.backends.db import SessionStore

    keys = {}
    for user in get_user_model().objects.filter(username__in=usernames):
        session = SessionStore()
        session[SESSION_KEY] = str(user.pk)
        session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        session[HASH_SESSION_KEY] = user.get_session_auth_hash()
        session.create()
        keys[user.get_username()] = session.session_key
    return keys


def _wait_up(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/accounts/login/", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("gunicorn did not answer in time")


def _percentiles(stats_csv: Path) -> dict[str, dict[str, str]]:
    with stats_csv.open() as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=ROOT, help="the tree gunicorn serves")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=int, default=120, help="seconds (at most 120)")
    parser.add_argument("--think", default="3,8", help="seconds of thinking, min,max")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--covid", type=int, default=9_000)
    parser.add_argument("--items", type=int, default=8_800)
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--no-seed", action="store_true", help="reuse the seeded database")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    duration = min(args.duration, 120)
    work = Path(tempfile.mkdtemp(prefix="review_load_"))
    django_env()
    env = {
        **os.environ,
        "MASKLOOP_VAR_DIR": os.environ.get("MASKLOOP_VAR_DIR", str(work / "var")),
        "DJANGO_DEBUG": "0",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    os.environ.update({k: env[k] for k in ("MASKLOOP_VAR_DIR", "DJANGO_SETTINGS_MODULE")})

    print(f"code served: {args.code} at {_git_rev(args.code)}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if not args.no_seed:
        seeded = _seed(args, env)
        mds = seeded["mds"]
    else:
        mds = [f"md{i + 1:02d}" for i in range(args.users)]

    import django

    django.setup()
    from django.db.models import Max

    from annotation.models import Decision

    first_decision = (Decision.objects.aggregate(n=Max("id"))["n"] or 0) + 1
    sessions = _sessions(mds[: args.users])

    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [
            str(VENV_BIN / "gunicorn"),
            "config.wsgi:application",
            "--bind",
            f"127.0.0.1:{args.port}",
            "--workers",
            str(args.workers),
            "--worker-class",
            "gthread",
            "--threads",
            str(args.threads),
            "--log-level",
            "warning",
        ],
        cwd=args.code,
        env={**env, "PYTHONPATH": str(args.code)},
        stdout=(work / "gunicorn.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    results = work / "decisions.jsonl"
    try:
        _wait_up(url, server)
        started = time.perf_counter()
        subprocess.run(
            [
                str(VENV_BIN / "locust"),
                "-f",
                str(ROOT / "bench" / "review_locust.py"),
                "--headless",
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.users),
                "--run-time",
                f"{duration}s",
                "--stop-timeout",
                "15",
                "--host",
                url,
                "--csv",
                str(work / "locust"),
                "--only-summary",
                "--loglevel",
                "WARNING",
            ],
            env={
                **env,
                "REVIEW_LOAD_MDS": ",".join(f"{u}:{k}" for u, k in sessions.items()),
                "REVIEW_LOAD_OUT": str(results),
                "REVIEW_LOAD_THINK": args.think,
            },
            timeout=duration + 60,
            stdout=(work / "locust.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        elapsed = time.perf_counter() - started
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()

    stats = _percentiles(work / "locust_stats.csv")
    print(
        f"\n{args.users} MDs, {duration} s, thinking {args.think} s, gunicorn "
        f"{args.workers} workers × {args.threads} threads"
    )
    print(f"{'endpoint':<15}{'requests':>9}{'failed':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}")
    for name in ENDPOINTS:
        row = stats.get(name)
        if row is None:
            continue
        print(
            f"{name:<15}{row['Request Count']:>9}{row['Failure Count']:>8}"
            f"{row['50%']:>8}{row['95%']:>8}{row['99%']:>8}"
        )

    rows = (
        [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    )
    created = [r for r in rows if r["status"] == 201]
    conflicts = [r for r in rows if r["status"] == 409]
    others = [r for r in rows if r["status"] not in (201, 409)]
    posts = len(rows)
    print(
        f"decision POSTs {posts}: 201 {len(created)}, 409 {len(conflicts)}, other {len(others)}"
        f" ({sorted({r['status'] for r in others})})"
    )
    print(f"share of 409s: {100 * len(conflicts) / posts if posts else 0:.1f} % of decision POSTs")
    print(f"decisions stored per minute: {len(created) / (elapsed / 60):.1f}")

    stored = Decision.objects.filter(id__gte=first_decision).select_related("reviewer", "item")
    pairs = {}
    for d in stored:
        key = (d.reviewer.get_username(), str(d.item.uuid))
        pairs[key] = pairs.get(key, 0) + 1
    answered = [(r["user"], r["item"]) for r in created]
    unmatched = [p for p in answered if pairs.get(p, 0) != 1]
    extra = set(pairs) - set(answered)
    print(
        f"Decision rows {sum(pairs.values())}; 201s matched by exactly one row: "
        f"{len(answered) - len(unmatched)}/{len(answered)}; rows without a 201: {len(extra)}"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"(logs and CSVs in {work})")


if __name__ == "__main__":
    main()
