"""Work hand-out: an item goes to at most `reviewers_per_item` MDs at a time, through leases that
the open page renews and that expire when abandoned. Through the real API, one request at a
time (the concurrent cases are in test_concurrency.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import services
from annotation.models import Decision, ReviewItem, ReviewLease, Round
from tests.annotation.review_world import open_round

pytestmark = pytest.mark.django_db


def next_id(client, after=None) -> str | None:
    response = client.get("/api/review-items/next/", {"after": after} if after else {})
    assert response.status_code in (200, 204), response.content
    return response.json()["id"] if response.status_code == 200 else None


def decide(client, item_id: str, choice: str = "A"):
    return client.post(
        f"/api/review-items/{item_id}/decision/", {"choice": choice, "seconds": 3}, format="json"
    )


def lease_of(md, item_id: str) -> ReviewLease:
    return ReviewLease.objects.get(reviewer=md, item__uuid=item_id)


def expire(md, item_id: str) -> None:
    ReviewLease.objects.filter(reviewer=md, item__uuid=item_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )


def test_mds_are_handed_different_items_in_order_each_leased(api):
    world = open_round(items=5, mds=3)
    clients = [api(md) for md in world.mds]
    handed = [next_id(c) for c in clients]
    assert handed == [str(i.uuid) for i in world.items[:3]]
    for md, item_id in zip(world.mds, handed, strict=True):
        assert ReviewLease.objects.filter(item__uuid=item_id).get().reviewer == md
    # Asking again (a reload) gives each MD the same item, not a new one.
    assert [next_id(c) for c in clients] == handed
    assert ReviewLease.objects.count() == 3


def test_the_lease_lasts_the_set_time(api, settings):
    settings.MASKLOOP_LEASE_SECONDS = 120
    world = open_round(items=2, mds=1)
    before = timezone.now()
    item_id = next_id(api(world.mds[0]))
    expires = lease_of(world.mds[0], item_id).expires_at
    assert before + timedelta(seconds=119) < expires < timezone.now() + timedelta(seconds=121)


def test_two_reviewers_per_item_hand_each_item_to_exactly_two_mds(api):
    world = open_round(items=3, mds=5, reviewers=2)
    handed = [next_id(api(md)) for md in world.mds]
    first, second, third = (str(i.uuid) for i in world.items)
    assert handed == [first, first, second, second, third]
    assert ReviewLease.objects.filter(item=world.items[0]).count() == 2


def test_the_prefetch_claims_a_second_item_and_no_more(api):
    world = open_round(items=5, mds=2)
    md, other = world.mds
    client = api(md)
    current = next_id(client)
    prefetched = next_id(client, after=current)
    assert prefetched not in (None, current)
    assert lease_of(md, prefetched).expires_at > timezone.now()
    # Asking again for either gives the one already held: two leases, never three.
    assert next_id(client) == current
    assert next_id(client, after=current) == prefetched
    assert next_id(client, after=prefetched) == current
    assert ReviewLease.objects.filter(reviewer=md).count() == 2
    # Another MD is handed neither.
    assert next_id(api(other)) not in (current, prefetched)

    # After the pick, the prefetched item is the current one and a new one is prefetched.
    assert decide(client, current).status_code == 201
    assert not ReviewLease.objects.filter(reviewer=md, item__uuid=current).exists()
    assert next_id(client) == prefetched
    third = next_id(client, after=prefetched)
    assert third not in (None, current, prefetched)
    assert set(ReviewLease.objects.filter(reviewer=md).values_list("item__uuid", flat=True)) == {
        world.items[1].uuid,
        ReviewItem.objects.get(uuid=third).uuid,
    }


def test_an_expired_lease_returns_the_item_to_the_pool(api):
    world = open_round(items=2, mds=3)
    away, busy, newcomer = world.mds
    abandoned = next_id(api(away))
    taken = next_id(api(busy))
    assert abandoned != taken
    assert next_id(api(newcomer)) is None  # both items are held

    expire(away, abandoned)
    assert next_id(api(newcomer)) == abandoned
    assert lease_of(newcomer, abandoned).expires_at > timezone.now()


def test_a_stale_lease_holder_gets_a_clear_409_once_the_item_went_to_another_md(api):
    world = open_round(items=1, mds=2)
    away, newcomer = world.mds
    item_id = next_id(api(away))
    expire(away, item_id)
    assert next_id(api(newcomer)) == item_id

    refused = decide(api(away), item_id)
    assert refused.status_code == 409
    assert "your hold on this image expired" in refused.json()["detail"]
    renewal = api(away).post(f"/api/review-items/{item_id}/lease/")
    assert renewal.status_code == 409
    assert "other MDs are reviewing this image" in renewal.json()["detail"]
    assert not Decision.objects.exists()

    assert decide(api(newcomer), item_id).status_code == 201
    assert Decision.objects.get().reviewer == newcomer


def test_an_expired_lease_still_counts_when_nobody_took_the_item(api):
    world = open_round(items=1, mds=1)
    md = world.mds[0]
    item_id = next_id(api(md))
    expire(md, item_id)
    assert decide(api(md), item_id).status_code == 201
    assert not ReviewLease.objects.exists()


def test_nobody_takes_an_item_from_the_md_who_holds_it(api):
    world = open_round(items=1, mds=2)
    holder, other = world.mds
    item_id = next_id(api(holder))
    refused = decide(api(other), item_id)
    assert refused.status_code == 409
    page = api(other).get(f"/review/{item_id}/")
    assert page.status_code == 302 and page["Location"] == "/review/next/"
    assert api(other).post(f"/api/review-items/{item_id}/lease/").status_code == 409
    assert ReviewLease.objects.get().reviewer == holder
    assert decide(api(holder), item_id).status_code == 201


def test_the_page_and_the_renew_endpoint_extend_the_lease_and_delete_gives_it_back(api, settings):
    world = open_round(items=2, mds=2)
    md, other = world.mds
    client = api(md)
    item_id = next_id(client)
    ReviewLease.objects.update(expires_at=timezone.now() + timedelta(seconds=30))

    renewed = client.post(f"/api/review-items/{item_id}/lease/")
    assert renewed.status_code == 200
    assert renewed.json()["seconds"] == settings.MASKLOOP_LEASE_SECONDS
    assert lease_of(md, item_id).expires_at > timezone.now() + timedelta(seconds=200)

    ReviewLease.objects.update(expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get(f"/api/review-items/{item_id}/").status_code == 200
    assert lease_of(md, item_id).expires_at > timezone.now() + timedelta(seconds=200)

    ReviewLease.objects.update(expires_at=timezone.now() + timedelta(seconds=30))
    assert client.get(f"/review/{item_id}/").status_code == 200
    assert lease_of(md, item_id).expires_at > timezone.now() + timedelta(seconds=200)

    assert client.delete(f"/api/review-items/{item_id}/lease/").status_code == 204
    assert not ReviewLease.objects.exists()
    assert next_id(api(other)) == item_id


def test_opening_an_item_page_takes_it_and_keeps_at_most_one_other(api):
    world = open_round(items=4, mds=1)
    md = world.mds[0]
    client = api(md)
    first = next_id(client)
    second = next_id(client, after=first)
    third = str(world.items[3].uuid)
    assert client.get(f"/review/{third}/").status_code == 200
    held = set(ReviewLease.objects.filter(reviewer=md).values_list("item__uuid", flat=True))
    assert {str(u) for u in held} == {second, third}


def test_the_review_next_page_claims_and_an_empty_pool_sends_the_md_to_the_queue(api):
    world = open_round(items=1, mds=2)
    page = api(world.mds[0]).get("/review/next/")
    assert page.status_code == 302 and page["Location"] == f"/review/{world.items[0].uuid}/"
    assert ReviewLease.objects.get().reviewer == world.mds[0]
    empty = api(world.mds[1]).get("/review/next/")
    assert empty.status_code == 302 and empty["Location"] == "/queue/"


def test_a_decided_item_is_never_handed_again_and_loses_every_lease(api):
    world = open_round(items=1, mds=3, reviewers=2)
    first, second, third = world.mds
    item_id = next_id(api(first))
    assert next_id(api(second)) == item_id
    assert decide(api(first), item_id).status_code == 201
    assert next_id(api(first)) is None  # decided by them
    assert next_id(api(third)) is None  # one decision + one live lease fill the two slots
    assert decide(api(second), item_id, "B").status_code == 201
    item = ReviewItem.objects.get(uuid=item_id)
    assert item.status == ReviewItem.Status.ADJUDICATION  # A vs B
    assert not ReviewLease.objects.exists()
    assert next_id(api(third)) is None


def test_no_item_is_handed_out_once_the_round_is_cancelled(api):
    world = open_round(items=3, mds=2)
    item_id = next_id(api(world.mds[0]))
    services.round_cancel(round=world.round, by=world.admins[0])
    assert next_id(api(world.mds[1])) is None
    assert next_id(api(world.mds[0])) is None
    refused = decide(api(world.mds[0]), item_id)
    assert refused.status_code == 409
    assert Round.objects.get().status == Round.Status.CANCELLED
