"""Times the review queue's hand-out (services.item_claim, the `GET /api/review-items/next/`
an MD calls after every pick) in a round of many open items. Prints figures; asserts nothing.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_handout \\
        .venv/bin/python bench/handout_scale.py --items 20000 100000

**It erases every maskloop row of that database first.** For each `--items` N it seeds one
Stage II round under review with N open items (no candidates: the hand-out never reads them
unless the MD drew one), `--mds` MDs and, as a busy round has them:

- the measured MD (md01) has decided a share of the open items (waiting for a second reader)
  and skipped the first `--skipped` items of the hand-out order;
- the other MDs have decided another share (one decision each) and each holds two live leases
  on the items at the head of the hand-out orders, each decided by another MD already (with
  two readers per item they are full), plus expired leases scattered over the rest;
- 90 % of the items have a disagreement score (the rest none), and md01 flagged 2 % of the
  images "uncertain".

Then, for reviewers per item 1 and 2, order "created" and "disagreement", and no queue filter,
a class+round filter and a flag filter, it times `--calls` hand-outs to md01 (each lease given
back at once, so every call sees the same state) and prints p50 / p95, and once the EXPLAIN
ANALYZE of the hand-out query (largest N, 2 per item, by disagreement).

Then it times the whole `GET /api/review-items/next/` request (Django's test Client, md01
logged in: the hand-out, the blind item and its `review_context`, "item n of N") and
`review_context` alone, for 1 and 2 readers per item, and prints the EXPLAIN ANALYZE of the
context's counts (the MD's decisions in the round, their items left). `--next-only` skips the
hand-out timings.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402

BATCH = 5000


def seed(*, items: int, mds: int, skipped: int, decided: float, seed: int = 0) -> dict[str, Any]:
    """One round under review with `items` open items and the queue state described above."""
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import (
        Decision,
        Image,
        ImageClass,
        ImageFlag,
        ImageFlagChange,
        ReviewItem,
        ReviewLease,
        Round,
    )
    from bench.seed_scale import _erase, _users

    rng = random.Random(seed)
    _erase()
    users = _users(mds)
    md, others = users["mds"][0], users["mds"][1:]
    now = timezone.now()
    with transaction.atomic():
        rnd = Round.objects.create(
            number=1,
            stage=Round.Stage.STAGE_II,
            status=Round.Status.REVIEWING,
            started_by=users["admin"],
            config={"networks": [["unet", "densenet121"]], "preset": "tiny"},
        )
        imgs = Image.objects.bulk_create(
            [
                Image(
                    name=f"handout_{i:06d}.png",
                    original="display/handout.png",
                    display="display/handout.png",
                    sha256=f"{i:064x}",
                    width=512,
                    height=512,
                    source="bench-handout",
                    image_class=ImageClass.COVID,
                    patient_id=f"P{i:06d}",
                    status=Image.Status.IN_REVIEW,
                )
                for i in range(items)
            ],
            batch_size=BATCH,
        )
        rows = ReviewItem.objects.bulk_create(
            [
                ReviewItem(
                    round=rnd,
                    image=img,
                    status=ReviewItem.Status.OPEN,
                    disagreement=rng.random() if rng.random() < 0.9 else None,
                )
                for img in imgs
            ],
            batch_size=BATCH,
        )
        ids = [r.pk for r in rows]
        by_score = sorted(
            rows, key=lambda r: (r.disagreement is None, -(r.disagreement or 0), r.pk)
        )
        # The head of both hand-out orders: what md01 skipped and others hold right now.
        head = list(dict.fromkeys([r.pk for r in by_score[:200]] + ids[:200]))
        in_head = set(head)
        rest = [pk for pk in ids if pk not in in_head]
        rng.shuffle(rest)
        n_mine = round(len(rest) * decided)
        mine, theirs = rest[:n_mine], rest[n_mine : 2 * n_mine]
        decisions = [Decision(item_id=pk, reviewer=md, seconds=10.0) for pk in mine]
        decisions += [
            Decision(item_id=pk, reviewer=others[k % len(others)], seconds=10.0)
            for k, pk in enumerate(theirs)
        ]
        live = now + timedelta(days=1)
        leases = [
            ReviewLease(item_id=pk, reviewer=md, expires_at=now, skipped_at=now)
            for pk in ids[:skipped] + [r.pk for r in by_score[:skipped]]
        ]
        taken = set(ids[:skipped]) | {r.pk for r in by_score[:skipped]}
        # Interleave both orders' heads, so that each order starts with items others hold.
        by_order = (
            [pk for pk in ids if pk not in taken],
            [r.pk for r in by_score if r.pk not in taken],
        )
        held = list(dict.fromkeys(pk for pair in zip(*by_order, strict=False) for pk in pair))
        for k, other in enumerate(others):
            for pk in held[2 * k : 2 * k + 2]:
                leases.append(ReviewLease(item_id=pk, reviewer=other, expires_at=live))
                # ... and another MD has decided it: with two readers per item it is full.
                decisions.append(
                    Decision(item_id=pk, reviewer=others[(k + 1) % len(others)], seconds=10.0)
                )
        Decision.objects.bulk_create(decisions, batch_size=BATCH)
        for k, pk in enumerate(rng.sample(rest, min(len(rest), items // 20))):
            leases.append(
                ReviewLease(
                    item_id=pk, reviewer=others[k % len(others)], expires_at=now - timedelta(1)
                )
            )
        ReviewLease.objects.bulk_create(leases, batch_size=BATCH, ignore_conflicts=True)
        ImageFlagChange.objects.bulk_create(
            [
                ImageFlagChange(image=img, flag=ImageFlag.UNCERTAIN, is_set=True, author=md)
                for img in rng.sample(imgs, items // 50)
            ],
            batch_size=BATCH,
        )
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE")  # as autovacuum leaves a settled table: index-only scans
    return {"round": rnd, "md": md, "decided": len(decisions), "leases": len(leases)}


def _explain(rnd: Any, md: Any, only: Any) -> str:
    """EXPLAIN ANALYZE of the hand-out's query, as `_claim_in_round` sends it."""
    from django.db import transaction
    from django.utils import timezone

    from annotation import selectors

    with transaction.atomic():
        items = selectors.claimable_items(md, rnd=rnd, now=timezone.now(), only=only)
        query = items.select_related("round", "image").select_for_update(
            skip_locked=True, of=("self",)
        )[:1]
        return query.explain(analyze=True, buffers=True)


def _time(md: Any, only: Any, calls: int) -> tuple[float, float, int]:
    from annotation import services

    times, handed = [], None
    for _ in range(calls):
        start = time.perf_counter()
        item = services.item_claim(reviewer=md, only=only)
        times.append(time.perf_counter() - start)
        if item is None:
            raise SystemExit("nothing handed out: the seeded state leaves md01 no item")
        handed = item.pk
        services.lease_release(item=item, reviewer=md)
    times.sort()
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times) * 1000, p95 * 1000, int(handed or 0)


def _percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
    return statistics.median(times) * 1000, p95 * 1000


def _time_next(md: Any, calls: int) -> tuple[float, float, dict[str, Any]]:
    """`calls` requests of `GET /api/review-items/next/` by md01, each lease given back."""
    from django.test import Client

    from annotation import services
    from annotation.models import ReviewItem

    client = Client(SERVER_NAME="localhost")
    client.force_login(md)
    times, context = [], {}
    for _ in range(calls):
        start = time.perf_counter()
        response = client.get("/api/review-items/next/")
        times.append(time.perf_counter() - start)
        if response.status_code != 200:
            raise SystemExit(f"next/ answered {response.status_code}: {response.content[:200]!r}")
        body = response.json()
        context = body["context"]
        services.lease_release(item=ReviewItem.objects.get(uuid=body["id"]), reviewer=md)
    return *_percentiles(times), context


def _time_context(rnd: Any, md: Any, calls: int) -> tuple[float, float]:
    from annotation import selectors

    item = rnd.items.select_related("round", "image").filter(status="open").first()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        selectors.review_context(item, md)
        times.append(time.perf_counter() - start)
    return _percentiles(times)


def _explain_context(rnd: Any, md: Any) -> str:
    """EXPLAIN ANALYZE of every count `review_context` sends, as it sends them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from annotation import selectors

    item = rnd.items.select_related("round", "image").filter(status="open").first()
    with CaptureQueriesContext(connection) as sent:
        selectors.review_context(item, md)
    plans = []
    with connection.cursor() as cur:
        for query in sent.captured_queries:
            if "COUNT(" not in query["sql"]:
                continue
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {query['sql']}")
            plans.append(query["sql"] + "\n" + "\n".join(row[0] for row in cur.fetchall()))
    return "\n\n".join(plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--mds", type=int, default=20)
    parser.add_argument("--skipped", type=int, default=30, help="items md01 skipped")
    parser.add_argument("--decided", type=float, default=0.2, help="share decided by md01")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--explain", action="store_true", help="print every EXPLAIN ANALYZE")
    parser.add_argument("--next-only", action="store_true", help="time only next/ and its context")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    setup_django()
    from django.core.management import call_command

    from annotation import selectors

    call_command("migrate", verbosity=0)
    for n in args.items:
        start = time.perf_counter()
        seeded = seed(items=n, mds=args.mds, skipped=args.skipped, decided=args.decided)
        rnd, md = seeded["round"], seeded["md"]
        print(
            f"\n{n} open items, {seeded['decided']} decisions, {seeded['leases']} leases "
            f"(seeded in {time.perf_counter() - start:.1f} s)"
        )
        filters = {
            "no filter": None,
            "class+round": selectors.QueueFilter(image_class="covid19", round=rnd.number),
            "flag": selectors.QueueFilter(flag="uncertain"),
        }
        for per_item in (1, 2):
            rnd.reviewers_per_item = per_item
            rnd.config = {**rnd.config, "order": "created"}
            rnd.save(update_fields=["reviewers_per_item", "config"])
            if per_item == 2:
                print(f"--- EXPLAIN ANALYZE of review_context's counts ({n} items, 2/item)")
                print(_explain_context(rnd, md))
            p50, p95, ctx = _time_next(md, args.calls)
            print(
                f"  {n:>7} items  {per_item}/item  GET next/        p50 {p50:7.1f} ms  "
                f"p95 {p95:7.1f} ms  (item {ctx['position']} of {ctx['total']})"
            )
            p50, p95 = _time_context(rnd, md, args.calls)
            print(
                f"  {n:>7} items  {per_item}/item  review_context   p50 {p50:7.1f} ms  "
                f"p95 {p95:7.1f} ms"
            )
        for per_item in (1, 2) if not args.next_only else ():
            for order in ("created", "disagreement"):
                rnd.reviewers_per_item = per_item
                rnd.config = {**rnd.config, "order": order}
                rnd.save(update_fields=["reviewers_per_item", "config"])
                for label, only in filters.items():
                    shown = per_item == 2 and order == "disagreement" and label != "class+round"
                    if args.explain or (shown and n == args.items[-1]):
                        print(f"--- EXPLAIN ANALYZE ({n} items, {per_item}/item, {order}, {label})")
                        print(_explain(rnd, md, only))
                    p50, p95, handed = _time(md, only, args.calls)
                    print(
                        f"  {n:>7} items  {per_item}/item  {order:<12}  {label:<11}  "
                        f"p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  (item {handed})"
                    )


if __name__ == "__main__":
    main()
