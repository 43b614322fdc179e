"""Many MDs at once, on the real PostgreSQL: each thread is one browser with its own database
connection, going through the real API. These tests commit (`transaction=True`), as requests
do, so that row locks, SKIP LOCKED and READ COMMITTED snapshots behave as in production."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, transaction

from annotation import services
from annotation.models import Decision, GroundTruth, ReviewItem, ReviewLease, Round
from tests.annotation.review_world import open_round

pytestmark = pytest.mark.django_db(transaction=True)


def in_threads(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Runs the jobs at once (released together by a barrier); returns results or exceptions."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def run(k: int) -> None:
        try:
            barrier.wait()
            results[k] = jobs[k]()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            results[k] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung (a lock wait?)"
    return results


def test_twenty_mds_asking_for_next_at_once_get_twenty_different_items(api):
    world = open_round(items=30, mds=20)
    clients = [api(md) for md in world.mds]
    responses = in_threads([lambda c=c: c.get("/api/review-items/next/") for c in clients])
    assert [r.status_code for r in responses] == [200] * 20
    handed = [r.json()["id"] for r in responses]
    assert len(set(handed)) == 20, Counter(handed).most_common(3)
    leases = ReviewLease.objects.select_related("item", "reviewer")
    assert sorted(str(lease.item.uuid) for lease in leases) == sorted(handed)
    assert {lease.reviewer for lease in leases} == set(world.mds)


def test_two_reviewers_per_item_hand_each_item_to_two_mds_at_most_when_all_ask_at_once(api):
    world = open_round(items=12, mds=20, reviewers=2)
    clients = [api(md) for md in world.mds]
    responses = in_threads([lambda c=c: c.get("/api/review-items/next/") for c in clients])
    # Every MD gets an item: 24 slots for 20 MDs, though an item being handed to one MD is
    # skipped by the others at that instant (so some items may get one MD and others two).
    assert [r.status_code for r in responses] == [200] * 20
    per_item = Counter(r.json()["id"] for r in responses)
    assert max(per_item.values()) == 2, per_item
    assert sum(per_item.values()) == 20
    assert Counter(ReviewLease.objects.values_list("item__uuid", flat=True)) == Counter(
        {uuid.UUID(k): v for k, v in per_item.items()}
    )


def test_fifty_mds_deciding_while_an_admin_cancels_the_round(api, eager_tasks):
    world = open_round(items=50, mds=50)
    clients = [api(md) for md in world.mds]
    handed = in_threads(
        [lambda c=c: c.get("/api/review-items/next/").json()["id"] for c in clients]
    )
    assert len(set(handed)) == 50
    admin = api(world.admins[0])

    def cancel():
        time.sleep(0.3)  # the MDs' picks are spread over a second: the cancel lands mid-burst
        return admin.post(f"/api/rounds/{world.round.number}/cancel/")

    jobs = [
        lambda c=c, item_id=item_id, k=k: (
            time.sleep(k * 0.02),
            c.post(
                f"/api/review-items/{item_id}/decision/",
                {"choice": "B", "seconds": 4},
                format="json",
            ),
        )[1]
        for k, (c, item_id) in enumerate(zip(clients, handed, strict=True))
    ]
    *picks, cancelled = in_threads([*jobs, cancel])

    errors = [r for r in [*picks, cancelled] if isinstance(r, Exception)]
    assert errors == []
    codes = Counter(r.status_code for r in picks)
    assert set(codes) <= {201, 409}, codes
    assert cancelled.status_code in (200, 202, 409), cancelled.content
    for md, item_id, response in zip(world.mds, handed, picks, strict=True):
        stored = Decision.objects.filter(reviewer=md, item__uuid=item_id).count()
        assert stored == (1 if response.status_code == 201 else 0), (response.status_code, stored)
    assert Decision.objects.count() == codes[201]

    rnd = Round.objects.get()
    for item in ReviewItem.objects.filter(round=rnd):
        truths = GroundTruth.objects.filter(item=item).count()
        if item.decisions.exists():
            assert item.status == ReviewItem.Status.ACCEPTED and truths == 1
        else:
            assert item.status == ReviewItem.Status.CANCELLED and truths == 0
    assert GroundTruth.objects.filter(item__round=rnd).count() == codes[201]
    if cancelled.status_code == 409:  # every decision came first
        assert codes[201] == 50 and rnd.status == Round.Status.DONE
    else:
        assert rnd.status == Round.Status.CANCELLED
    print(f"decisions stored {codes[201]}, refused {codes[409]}, cancel {cancelled.status_code}")


def test_adjudications_while_an_admin_cancels_the_round_neither_deadlock_nor_fail(api, eager_tasks):
    world = open_round(items=12, mds=2, reviewers=2, admins=13)
    first, second = world.mds
    for item in world.items:
        services.decision_create(item=item, reviewer=first, choice="A", seconds=1)
        services.decision_create(item=item, reviewer=second, choice="B", seconds=1)
    assert set(ReviewItem.objects.values_list("status", flat=True)) == {"adjudication"}
    judges = [api(a) for a in world.admins[:12]]
    canceller = api(world.admins[12])
    jobs = [
        lambda c=c, item=item: c.post(
            f"/api/review-items/{item.uuid}/adjudicate/", {"choice": "A"}, format="json"
        )
        for c, item in zip(judges, world.items, strict=True)
    ]
    *rulings, cancelled = in_threads(
        [*jobs, lambda: canceller.post(f"/api/rounds/{world.round.number}/cancel/")]
    )
    assert not [r for r in [*rulings, cancelled] if isinstance(r, Exception)]
    assert {r.status_code for r in rulings} <= {201, 409}
    assert cancelled.status_code in (200, 202, 409)
    accepted = [r.status_code for r in rulings].count(201)
    assert GroundTruth.objects.count() == accepted
    for item in ReviewItem.objects.all():
        expected = 1 if item.status == ReviewItem.Status.ACCEPTED else 0
        assert GroundTruth.objects.filter(item=item).count() == expected


def test_a_decision_never_waits_for_the_round_lock(api):
    """While another transaction holds the round's row lock (a cancel or an advance at work),
    decisions on items that are not the round's last go through."""
    world = open_round(items=3, mds=2)
    holding, release = threading.Event(), threading.Event()

    def hold_round() -> None:
        try:
            with transaction.atomic():
                Round.objects.select_for_update().get(pk=world.round.pk)
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_round)
    holder.start()
    try:
        assert holding.wait(10)
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '3s'")  # a wait on the round fails the decision
        for md, item in zip(world.mds, world.items, strict=False):
            services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = 0")
    finally:
        release.set()
        holder.join(10)
    assert Decision.objects.count() == 2
    assert Round.objects.get().status == Round.Status.REVIEWING
