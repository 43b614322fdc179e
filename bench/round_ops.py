"""Round open (advance) and cancel at QaTa scale: wall time, the longest lock held, and how
decisions fare meanwhile.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python bench/round_ops.py [--images 120000] [--items 9000]

**Erases that database** (bench/seed_scale.py seeds it), then:

1. seeds a Stage II round of `--items` items × 5 candidates, training with pending items,
   and marks its runs succeeded;
2. *advance*: calls `round_advance` (what the last run's report calls) and waits until every
   item is open — with the batched code a real Celery worker (started here, queue `default`)
   opens the rest, batch by batch;
3. *cancel*: calls `round_cancel` on that round of open items and waits until every item is
   withdrawn.

While each runs, a sampler polls PostgreSQL every 10 ms for the longest-open transaction that
holds row locks (a transaction id: it wrote or locked rows) — the longest any lock was held —
and a thread plays one MD deciding open items (decision latency, refusals, errors). Works on
the code before the change too (one transaction per operation, no worker needed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPEN_WRITERS_SQL = """
    SELECT a.pid, extract(epoch FROM clock_timestamp() - a.xact_start)
    FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()
      AND a.xact_start IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'transactionid'
                  AND l.granted)
"""


class LockSampler(threading.Thread):
    """The longest-open write transaction seen, polled from its own connection: of the bulk
    operation (the bench's own connection and the worker's), and of the MD's decisions."""

    def __init__(self, dsn: str, decider_pids: set[int]) -> None:
        super().__init__(daemon=True)
        import psycopg2

        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.longest = self.decision_longest = 0.0
        self.decider_pids = decider_pids
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with self.conn.cursor() as cur:
                cur.execute(OPEN_WRITERS_SQL)
                for pid, seconds in cur.fetchall():
                    if pid in self.decider_pids:
                        self.decision_longest = max(self.decision_longest, float(seconds))
                    else:
                        self.longest = max(self.longest, float(seconds))
            time.sleep(0.01)


class Decider(threading.Thread):
    """One MD deciding open items of the round, one after another, without thinking time."""

    def __init__(self, round_id: int, username: str) -> None:
        super().__init__(daemon=True)
        self.round_id, self.username = round_id, username
        self.latencies: list[float] = []
        self.refused = self.errors = 0
        self.pids: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        from django.contrib.auth.models import User
        from django.db import connection

        from annotation import services
        from annotation.errors import DomainError
        from annotation.models import ReviewItem

        md = User.objects.get(username=self.username)
        with connection.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.pids.add(cur.fetchone()[0])
        seen: set[int] = set()
        try:
            while not self.stop.is_set():
                item = (
                    ReviewItem.objects.filter(round_id=self.round_id, status="open")
                    .exclude(pk__in=seen)
                    .order_by("-id")
                    .first()
                )
                if item is None:
                    time.sleep(0.02)
                    continue
                seen.add(item.pk)
                started = time.perf_counter()
                try:
                    services.decision_create(item=item, reviewer=md, choice="A", seconds=3.0)
                except DomainError:
                    self.refused += 1
                except Exception as exc:  # a deadlock or another 500: counted, not fatal
                    self.errors += 1
                    print(f"    decision error: {type(exc).__name__}: {exc}"[:200])
                else:
                    self.latencies.append(time.perf_counter() - started)
        finally:
            connection.close()

    def summary(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return f"0 stored, {self.refused} refused, {self.errors} errors"
        p50 = statistics.median(lat) * 1000
        return (
            f"{len(lat)} stored (p50 {p50:.0f} ms, max {lat[-1] * 1000:.0f} ms), "
            f"{self.refused} refused, {self.errors} errors"
        )


def measure(
    what: str, start, done, *, round_id: int, md: str, dsn: str, decide: bool = True
) -> None:
    decider = Decider(round_id, md)
    if decide:
        decider.start()
    sampler = LockSampler(dsn, decider.pids)
    sampler.start()
    time.sleep(0.3)
    t0 = time.perf_counter()
    failed = ""
    try:
        start()
    except Exception as exc:  # e.g. the deadlock the code before the change runs into
        failed = f"   FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    call = time.perf_counter() - t0
    while not failed and not done():
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    time.sleep(0.1)
    sampler.stop.set()
    decider.stop.set()
    sampler.join()
    if decide:
        decider.join()
    print(
        f"{what:<8} call {call:7.2f} s   until all items moved {wall:7.2f} s   "
        f"longest lock held {sampler.longest:6.2f} s   load {os.getloadavg()[0]:.2f}{failed}"
    )
    print(f"         longest decision transaction meanwhile {sampler.decision_longest:6.2f} s")
    print(f"         decisions meanwhile (1 MD, no thinking time): {decider.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--items", type=int, default=9_000)
    parser.add_argument("--batch", type=int, default=None, help="MASKLOOP_BULK_BATCH")
    parser.add_argument(
        "--cancel-only", action="store_true", help="seed an open round and only cancel it"
    )
    parser.add_argument("--no-decisions", action="store_true", help="no MD deciding meanwhile")
    args = parser.parse_args()
    dsn = os.environ.get("DATABASE_URL", "")
    if not dsn.startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    os.environ.setdefault("MASKLOOP_VAR_DIR", tempfile.mkdtemp(prefix="maskloop-roundops-"))
    if args.batch:
        os.environ["MASKLOOP_BULK_BATCH"] = str(args.batch)
    from bench.benchenv import setup_django

    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db.models import Count

    from annotation import services
    from annotation.models import ReviewItem, Round
    from annotation.services import rounds
    from bench.seed_scale import seed
    from config.celery import app
    from training.models import TrainingRun

    batched = hasattr(rounds, "round_open_batch")
    print(f"code: {'batched' if batched else 'one transaction'}; load {os.getloadavg()}")
    out = seed(
        images=args.images,
        covid=min(args.images, max(args.items, 9000)),
        items=args.items,
        candidates=5,
        mds=2,
        pending=not args.cancel_only,
        log=lambda *a: None,
    )
    round_id = out["round_id"]
    TrainingRun.objects.filter(round_id=round_id).update(status=TrainingRun.Status.SUCCEEDED)
    items = ReviewItem.objects.filter(round_id=round_id)
    print(f"seeded {args.images} images, round of {items.count()} items × 5 candidates")

    worker = None
    if batched:
        app.control.purge()
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default"]
            + ["-c", "2", "--loglevel", "WARNING", "--without-heartbeat", "--without-gossip"],
            cwd=ROOT,
            env=os.environ.copy(),
        )
        time.sleep(8)  # the worker connects and imports the apps
    try:
        waiting = items.filter(status__in=["pending", "open", "adjudication"])
        decide = not args.no_decisions
        if not args.cancel_only:
            measure(
                "advance",
                lambda: services.round_advance(round_id=round_id),
                lambda: (
                    not items.filter(status="pending").exists()
                    and not Round.objects.get(pk=round_id).progress
                ),
                round_id=round_id,
                md=out["mds"][0],
                dsn=dsn,
                decide=decide,
            )
        rnd = Round.objects.get(pk=round_id)
        measure(
            "cancel",
            lambda: services.round_cancel(round=rnd, by="bench"),
            lambda: not waiting.exists() and not Round.objects.get(pk=round_id).progress,
            round_id=round_id,
            md=out["mds"][1],
            dsn=dsn,
            decide=decide,
        )
        final = items.order_by().values_list("status").annotate(n=Count("id"))
        print(f"items at the end: {dict(final)}")
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)


if __name__ == "__main__":
    main()
