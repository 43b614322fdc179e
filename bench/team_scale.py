"""Times the admins' per-MD table (selectors.round_team) and the MD's filtered, disagreement-
ordered hand-out at scale. Prints figures; asserts nothing.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
        .venv/bin/python bench/team_scale.py --images 120000 --covid 60000 --items 50000

**It erases every maskloop row of that database first** (bench/seed_scale.py seeds it). On top
of the seeded round (a share of its items decided by one MD each), every decided item gets a
second MD's pick (random: agreeing or not), so the agreement figures have shared items; every
open item gets a random disagreement score and the round is set to order by it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120_000)
    parser.add_argument("--covid", type=int, default=60_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--mds", type=int, default=20)
    parser.add_argument("--decided", type=float, default=0.6)
    args = parser.parse_args()
    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection

    from annotation import selectors, services
    from annotation.models import Candidate, Decision, ReviewItem, Round
    from bench.seed_scale import seed

    seeded = seed(
        images=args.images, covid=args.covid, items=args.items, mds=args.mds, decided=args.decided
    )
    rnd = Round.objects.get(number=seeded["round_number"])
    rng = random.Random(1)
    users = list(get_user_model().objects.filter(groups__name="md").order_by("username"))
    labelled: dict[int, list[int]] = {}
    for item_id, pk in Candidate.objects.filter(item__round=rnd).values_list("item_id", "pk"):
        labelled.setdefault(item_id, []).append(pk)
    start = time.perf_counter()
    firsts = Decision.objects.filter(item__round=rnd).values_list("item_id", "reviewer_id")
    index = {u.pk: k for k, u in enumerate(users)}
    second = [
        Decision(
            item_id=item_id,
            reviewer=users[(index[reviewer] + 1) % len(users)],
            candidate_id=rng.choice(labelled[item_id]),
            seconds=rng.uniform(3, 30),
        )
        for item_id, reviewer in firsts
    ]
    Decision.objects.bulk_create(second, batch_size=5000)
    open_items = list(
        ReviewItem.objects.filter(round=rnd, status=ReviewItem.Status.OPEN).values_list(
            "pk", flat=True
        )
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE annotation_reviewitem SET disagreement = random() WHERE id = ANY(%s)",
            [open_items],
        )
        cursor.execute("ANALYZE")
    rnd.config = {**rnd.config, "order": "disagreement"}
    rnd.save(update_fields=["config"])
    print(
        f"second picks: {len(second)}; open items: {len(open_items)}; "
        f"({time.perf_counter() - start:.1f} s)"
    )

    for n in range(3):
        start = time.perf_counter()
        report = selectors.round_team(rnd)
        took = time.perf_counter() - start
        print(
            f"round_team run {n + 1}: {took * 1000:.0f} ms, {len(report.mds)} MDs, "
            f"{len(report.pairs_total)} pairs, "
            f"{sum(m.reviewed_total for m in report.mds)} picks"
        )
    md = users[-1]
    only = selectors.QueueFilter(image_class="covid19", round=rnd.number, flag="")
    for label, flt in (("no filter", None), ("class+round filter", only)):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            item = services.item_claim(reviewer=md, only=flt)
            times.append(time.perf_counter() - start)
            assert item is not None
            services.lease_release(item=item, reviewer=md)
        print(f"item_claim, disagreement order, {label}: median {sorted(times)[2] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
