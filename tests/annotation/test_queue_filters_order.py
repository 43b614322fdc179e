"""The MD's queue filters (class, round, their own flags) and a round's review order: highest
ensemble disagreement first, as documented in annotation/agreement.py."""

from __future__ import annotations

import numpy as np
import pytest
from django.utils import timezone

from annotation import selectors, services, storage
from annotation.errors import DomainError
from annotation.models import Image, ImageClass, ReviewItem, ReviewLease, Round
from annotation.selectors import QueueFilter
from annotation.services import rounds as rounds_service
from tests.annotation.review_world import open_round
from tests.conftest import finish_runs_with

pytestmark = pytest.mark.django_db


def hand_out_all(md, only=None) -> list[ReviewItem]:
    """Claims and decides until nothing is left: the order the MD was handed items in."""
    order = []
    while (item := services.item_claim(reviewer=md, only=only)) is not None:
        order.append(item)
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    return order


# ---------------------------------------------------------------- review order


def test_a_round_ordered_by_disagreement_hands_the_highest_first_and_unscored_last():
    world = open_round(items=5, mds=1)
    world.round.config = {"order": "disagreement"}
    world.round.save(update_fields=["config"])
    scores = [0.1, None, 0.9, 0.5, None]
    for item, score in zip(world.items, scores, strict=True):
        ReviewItem.objects.filter(pk=item.pk).update(disagreement=score)
    handed = hand_out_all(world.mds[0])
    expected = [world.items[i].pk for i in (2, 3, 0, 1, 4)]  # 0.9, 0.5, 0.1, then ids
    assert [i.pk for i in handed] == expected


def test_the_default_order_is_creation_order_whatever_the_scores():
    world = open_round(items=4, mds=1)
    for item, score in zip(world.items, [0.1, 0.9, None, 0.5], strict=True):
        ReviewItem.objects.filter(pk=item.pk).update(disagreement=score)
    assert selectors.review_order(world.round) == "created"
    assert [i.pk for i in hand_out_all(world.mds[0])] == [i.pk for i in world.items]


def test_a_skipped_item_still_comes_last_in_disagreement_order():
    world = open_round(items=3, mds=1)
    world.round.config = {"order": "disagreement"}
    world.round.save(update_fields=["config"])
    for item, score in zip(world.items, [0.2, 0.8, 0.5], strict=True):
        ReviewItem.objects.filter(pk=item.pk).update(disagreement=score)
    md = world.mds[0]
    top = services.item_claim(reviewer=md)
    assert top.pk == world.items[1].pk
    services.item_skip(item=top, reviewer=md)
    assert [i.pk for i in hand_out_all(md)] == [world.items[k].pk for k in (2, 0, 1)]


def _by_disagreement(world, scores) -> None:
    world.round.config = {"order": "disagreement"}
    world.round.save(update_fields=["config"])
    for item, score in zip(world.items, scores, strict=True):
        ReviewItem.objects.filter(pk=item.pk).update(disagreement=score)


def test_with_two_readers_a_skipped_item_comes_after_the_unscored_ones():
    world = open_round(items=4, mds=1, reviewers=2)
    _by_disagreement(world, [0.2, 0.8, None, 0.5])
    md = world.mds[0]
    top = services.item_claim(reviewer=md)
    assert top.pk == world.items[1].pk
    services.item_skip(item=top, reviewer=md)
    # 0.5, 0.2, the unscored one, then the skipped 0.8.
    assert [i.pk for i in hand_out_all(md)] == [world.items[k].pk for k in (3, 0, 2, 1)]


def test_with_two_readers_a_skipped_item_comes_back_once_no_other_has_a_free_slot():
    world = open_round(items=4, mds=3, reviewers=2)
    _by_disagreement(world, [0.2, 0.8, None, 0.5])
    md, other, third = world.mds
    top = services.item_claim(reviewer=md)
    assert top.pk == world.items[1].pk
    services.item_skip(item=top, reviewer=md)
    nxt = services.item_claim(reviewer=md)
    assert nxt.pk == world.items[3].pk  # not the skipped one: others are free
    services.lease_release(item=nxt, reviewer=md)
    # The other two MDs take every slot but the skipped item's: they decide the 0.5 item and
    # hold the 0.2 and the unscored one.
    for reviewer in (other, third):
        services.lease_take(item=world.items[3], reviewer=reviewer)
        services.decision_create(item=world.items[3], reviewer=reviewer, choice="A", seconds=1)
        services.lease_take(item=world.items[0], reviewer=reviewer)
        services.lease_take(item=world.items[2], reviewer=reviewer)
    assert ReviewItem.objects.get(pk=world.items[3].pk).status != ReviewItem.Status.OPEN
    back = services.item_claim(reviewer=md)
    assert back is not None and back.pk == world.items[1].pk
    assert ReviewLease.objects.get(item=back, reviewer=md).skipped_at is None
    # Held by md now, the skipped item was the last: the prefetch finds nothing more.
    assert services.item_claim(reviewer=md, after=back) is None


SHIFTS = [0, 5, 10, 20]  # the second network's mask, moved right: Dice (20 − s) / 20


def _square(shift: int) -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10 + shift : 30 + shift] = True
    return mask


def test_scores_are_computed_as_items_open_and_the_claim_follows_them(
    make_image, drawer, admin_user, md, monkeypatch
):
    images = [make_image(manual_by=drawer) for _ in SHIFTS]
    shift_of = {img.pk: s for img, s in zip(images, SHIFTS, strict=True)}
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        networks=[("unet", "densenet121"), ("unetpp", "densenet121")],
        folds=2,
        preset="tiny",
        order="disagreement",
    )
    assert rnd.config["order"] == "disagreement"
    reads: list[str] = []
    real_read = storage.read

    def counting_read(name):
        reads.append(name)
        return real_read(name)

    monkeypatch.setattr(rounds_service.storage, "read", counting_read)
    finish_runs_with(
        rnd,
        lambda image, run: _square(shift_of[image.pk] if run.arch == "unetpp" else 0),
    )
    items = {i.image_id: i for i in ReviewItem.objects.filter(round=rnd)}
    for img in images:
        # Two machine masks per image: disagreement = 1 − Dice = s / 20.
        assert items[img.pk].disagreement == pytest.approx(shift_of[img.pk] / 20)
    # Each machine mask read at most once (identical ones not at all): no read per pair.
    assert len(reads) == len(set(reads)) <= 2 * len(images)
    handed = hand_out_all(md)
    assert [shift_of[i.image_id] for i in handed] == sorted(SHIFTS, reverse=True)


def test_a_round_in_creation_order_reads_no_mask_for_scores(
    make_image, drawer, admin_user, monkeypatch
):
    for _ in range(2):
        make_image(manual_by=drawer)
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        networks=[("unet", "densenet121"), ("unetpp", "densenet121")],
        folds=2,
        preset="tiny",
    )
    finish_runs_with(rnd, lambda image, run: _square(5 if run.arch == "unetpp" else 0))
    assert not ReviewItem.objects.filter(round=rnd, disagreement__isnull=False).exists()


def test_an_unknown_order_is_refused_in_a_sentence(admin_user, api):
    response = api(admin_user).post(
        "/api/rounds/", {"stage": "I", "order": "random"}, format="json"
    )
    assert response.status_code == 400
    assert "order" in response.json()
    with pytest.raises(DomainError, match="review order must be one of"):
        services.round_start(stage="I", started_by=admin_user, order="random")


def test_the_rounds_form_offers_the_order_in_an_advanced_fold_out(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/rounds/").content.decode()
    assert 'id="advanced-order"' in page
    assert '<option value="disagreement">Highest ensemble disagreement first</option>' in page


# ---------------------------------------------------------------- queue filters


def test_the_class_filter_hands_out_only_that_class():
    world = open_round(items=4, mds=1)
    normal = [world.items[1].image_id, world.items[3].image_id]
    Image.objects.filter(pk__in=normal).update(image_class=ImageClass.NORMAL)
    md = world.mds[0]
    only = QueueFilter(image_class=ImageClass.NORMAL)
    assert [i.image_id for i in hand_out_all(md, only)] == normal
    assert selectors.review_count_for(md, only=only) == 0
    assert selectors.review_count_for(md) == 2


def test_the_round_filter_hands_out_only_that_round():
    world = open_round(items=2, mds=1)
    md = world.mds[0]
    assert services.item_claim(reviewer=md, only=QueueFilter(round=7)) is None
    assert services.item_claim(reviewer=md, only=QueueFilter(round=1)) is not None


def test_the_flag_filter_counts_only_the_mds_own_standing_flags():
    world = open_round(items=4, mds=2)
    md, other = world.mds
    first, second, third, _ = (i.image for i in world.items)
    services.image_flags_set(image=second, author=md, flags={"uncertain": True})
    services.image_flags_set(image=third, author=md, flags={"uncertain": True})
    services.image_flags_set(image=third, author=md, flags={"uncertain": False})  # cleared
    services.image_flags_set(image=first, author=other, flags={"uncertain": True})  # not theirs
    only = QueueFilter(flag="uncertain")
    assert [i.image_id for i in hand_out_all(md, only)] == [second.pk]
    assert [i.image_id for i in hand_out_all(other, only)] == [first.pk]


def test_a_held_item_outside_the_filter_goes_back_to_the_pool():
    world = open_round(items=3, mds=1)
    md = world.mds[0]
    held = services.item_claim(reviewer=md)
    assert held.pk == world.items[0].pk
    Image.objects.filter(pk=world.items[2].image_id).update(image_class=ImageClass.NORMAL)
    item = services.item_claim(reviewer=md, only=QueueFilter(image_class=ImageClass.NORMAL))
    assert item.pk == world.items[2].pk
    assert not ReviewLease.objects.filter(
        item=held, reviewer=md, expires_at__gt=timezone.now()
    ).exists()


def test_the_api_takes_the_filter_and_says_what_is_wrong(api):
    world = open_round(items=2, mds=1)
    client = api(world.mds[0])
    assert client.get("/api/review-items/next/", {"class": "normal"}).status_code == 204
    assert (
        client.get("/api/review-items/next/", {"class": "covid19", "round": 1}).status_code == 200
    )
    bad = client.get("/api/review-items/next/", {"class": "ghosts"})
    assert bad.status_code == 400 and "class must be one of" in bad.json()["detail"]
    bad = client.get("/api/review-items/next/", {"round": "two"})
    assert bad.status_code == 400 and "round must be a round number" in bad.json()["detail"]
    bad = client.get("/api/review-items/next/", {"flag": "lovely"})
    assert bad.status_code == 400 and "flag must be one of" in bad.json()["detail"]


def test_the_review_page_keeps_the_filter_for_the_next_item(api):
    world = open_round(items=2, mds=1)
    client = api(world.mds[0])
    response = client.get("/review/next/", {"class": "covid19", "round": "1", "flag": ""})
    assert response.status_code == 302
    assert response["Location"].endswith("?class=covid19&round=1")
    page = client.get(response["Location"]).content.decode()
    assert 'data-next-api-url="/api/review-items/next/?class=covid19&amp;round=1"' in page
    assert 'data-filter-query="?class=covid19&amp;round=1"' in page
    assert "Only class COVID-19, round 1" in page


def test_a_filter_that_leaves_nothing_says_so_on_the_queue(api):
    world = open_round(items=2, mds=1)
    client = api(world.mds[0])
    response = client.get("/review/next/", {"class": "normal"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == "/queue/?class=normal"
    assert "Nothing left to review with your filter (class Normal)" in page
    assert "Clear it to review the other 2 items." in page
    assert "None of your 2 items to review matches class Normal" in page
