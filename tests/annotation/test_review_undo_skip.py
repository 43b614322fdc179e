"""Skip and undo on the review page: a skipped item goes back to the pool and comes back to the
MD last; a pick is undone within MASKLOOP_UNDO_SECONDS while the item is open and nobody
decided after it, and an undone pick is kept (revoked) but counted nowhere."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotation import selectors, services
from annotation.errors import Conflict
from annotation.models import Decision, GroundTruth, ReviewItem, ReviewLease

pytestmark = pytest.mark.django_db


def pick(item, md, choice="A"):
    return services.decision_create(item=item, reviewer=md, choice=choice, seconds=2.0)


# ---------------------------------------------------------------- skip


def test_a_skipped_item_goes_back_to_the_pool_and_comes_back_to_the_md_last(
    reviewing_round, md, md2
):
    rnd = reviewing_round(images=2)
    first = services.item_claim(reviewer=md)
    services.item_skip(item=first, reviewer=md)
    assert not ReviewLease.objects.filter(item=first, expires_at__gt=timezone.now()).exists()
    assert selectors.item_slots(first.pk, user=md2, now=timezone.now())["held"] == 0
    other = services.item_claim(reviewer=md)
    assert other is not None and other != first
    pick(other, md)
    # The other items ran out: the skipped one is offered again, and the mark is cleared.
    assert services.item_claim(reviewer=md) == first
    assert ReviewLease.objects.get(item=first, reviewer=md).skipped_at is None
    assert rnd.items.filter(status=ReviewItem.Status.OPEN).count() == 1


def test_another_md_is_handed_an_item_the_first_skipped(reviewing_round, md, md2):
    reviewing_round(images=2)
    first = services.item_claim(reviewer=md)
    services.item_skip(item=first, reviewer=md)
    assert services.item_claim(reviewer=md2) == first


def test_skip_through_the_api(reviewing_round, md, api):
    reviewing_round(images=2)
    client = api(md)
    first = client.get("/api/review-items/next/").json()["id"]
    assert client.post(f"/api/review-items/{first}/skip/").status_code == 204
    assert client.get("/api/review-items/next/").json()["id"] != first


# ---------------------------------------------------------------- undo


def test_undo_within_the_window_gives_the_item_back_and_keeps_the_pick(reviewing_round, md):
    rnd = reviewing_round(images=2, reviewers=2)
    item = services.item_claim(reviewer=md)
    pick(item, md, "A")
    undone = services.decision_undo(item=item, reviewer=md)
    assert undone.revoked_at is not None and undone.revoked_by == md
    assert not Decision.objects.filter(item=item).exists()
    assert Decision.with_revoked.filter(item=item, reviewer=md).count() == 1
    assert ReviewLease.objects.get(item=item, reviewer=md).expires_at > timezone.now()
    assert services.item_claim(reviewer=md) == item  # their current item again
    pick(item, md, "B")
    assert Decision.objects.get(item=item, reviewer=md).candidate.label == "B"
    assert Decision.with_revoked.filter(item=item, reviewer=md).count() == 2
    assert selectors.round_statistics(rnd)["decisions"] == 1


def test_undo_after_the_window_is_refused(reviewing_round, md, settings):
    settings.MASKLOOP_UNDO_SECONDS = 60
    reviewing_round(images=2, reviewers=2)
    item = services.item_claim(reviewer=md)
    decision = pick(item, md)
    Decision.objects.filter(pk=decision.pk).update(
        created_at=timezone.now() - timedelta(seconds=61)
    )
    with pytest.raises(Conflict, match="within 60 seconds"):
        services.decision_undo(item=item, reviewer=md)
    assert Decision.objects.filter(pk=decision.pk).exists()


def test_undo_after_another_md_decided_is_refused(reviewing_round, md, md2):
    reviewing_round(images=2, reviewers=3)
    item = services.item_claim(reviewer=md)
    pick(item, md)
    assert services.item_claim(reviewer=md2) == item
    pick(item, md2)
    with pytest.raises(Conflict, match="another MD has decided"):
        services.decision_undo(item=item, reviewer=md)


def test_undo_of_a_pick_that_resolved_the_item_is_refused(reviewing_round, md):
    reviewing_round(images=2)
    item = services.item_claim(reviewer=md)
    pick(item, md, "B")
    with pytest.raises(Conflict, match="settled"):
        services.decision_undo(item=item, reviewer=md)
    assert GroundTruth.objects.filter(item=item).count() == 1


def test_revoked_picks_count_nowhere(reviewing_round, md, md2):
    """md picks A and undoes it; md2 and md then pick B: the item resolves on B with full
    agreement, ground truth is B's mask, and the statistics count two decisions."""
    rnd = reviewing_round(images=2, reviewers=2)
    item = services.item_claim(reviewer=md)
    pick(item, md, "A")
    services.decision_undo(item=item, reviewer=md)
    assert services.item_claim(reviewer=md2) == item
    pick(item, md2, "B")
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.OPEN  # the revoked pick is not one of two
    pick(item, md, "B")
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ACCEPTED
    assert item.agreement == 1.0
    gt = GroundTruth.objects.get(item=item)
    assert gt.mask == item.candidates.get(label="B").mask
    assert gt.decision.revoked_at is None
    stats = selectors.round_statistics(rnd)
    assert stats["decisions"] == 2
    assert stats["decisions_per_md"] == {"md1": 1, "md2": 1}
    assert selectors.md_queue(md).decided_in_round == 1


def test_undo_through_the_api(reviewing_round, md, md2, api):
    reviewing_round(images=2, reviewers=2)
    client = api(md)
    first = client.get("/api/review-items/next/").json()["id"]
    response = client.post(
        f"/api/review-items/{first}/decision/", {"choice": "A", "seconds": 1}, format="json"
    )
    assert response.status_code == 201
    response = client.post(f"/api/review-items/{first}/undo/")
    assert response.status_code == 200, response.content
    assert response.json() == {"page_url": f"/review/{first}/"}
    again = client.post(f"/api/review-items/{first}/undo/")
    assert again.status_code == 409
    assert "no pick" in again.json()["detail"]
    assert api(md2).post(f"/api/review-items/{first}/undo/").status_code == 409


# ---------------------------------------------------------------- context


def test_the_context_counts_the_md_s_items_and_progress(reviewing_round, md, api):
    reviewing_round(images=3)
    client = api(md)
    body = client.get("/api/review-items/next/").json()
    ctx = body["context"]
    item = ReviewItem.objects.select_related("image").get(uuid=body["id"])
    assert ctx == {
        "image_name": item.image.name,
        "image_class": "COVID-19",
        "patient": item.image.patient_id,
        "round": item.round.number,
        "position": 1,
        "total": 3,
        "decided_in_round": 0,
        "decided_today": 0,
    }
    client.post(f"/api/review-items/{body['id']}/decision/", {"choice": "A"}, format="json")
    ctx = client.get("/api/review-items/next/").json()["context"]
    assert (ctx["position"], ctx["total"], ctx["decided_in_round"], ctx["decided_today"]) == (
        2,
        3,
        1,
        1,
    )


def test_the_items_left_are_the_open_items_the_md_may_still_review(
    reviewing_round, md, md2, drawer
):
    """review_context counts the round's open items and takes away the MD's own (decided,
    drawn): the same figure as counting open_items_for, item by item, in every state."""
    rnd = reviewing_round(images=5, reviewers=2)
    a, b, c, d, e = rnd.items.select_related("round", "image").order_by("id")
    pick(a, md)  # decided by md, still open: waiting for a second reader
    pick(b, md2)  # decided by md2 only: still md's to review
    pick(c, md)
    pick(c, md2, choice="B")  # decided by both: closed (accepted or tied)
    pick(d, md)
    services.decision_undo(item=d, reviewer=md)  # undone: counted nowhere, md's again
    assert not ReviewItem.objects.filter(pk=c.pk, status=ReviewItem.Status.OPEN).exists()

    def figures(user):
        ctx = selectors.review_context(e, user)
        return ctx["decided_in_round"], ctx["total"] - ctx["decided_in_round"]

    def counted(user):
        left = selectors.open_items_for(user).filter(round_id=rnd.pk).count()
        return Decision.objects.filter(reviewer=user, item__round=rnd).count(), max(left, 1)

    # md: decided a and c; b, d and e are left. md2: decided b and c; a, d and e are left.
    assert figures(md) == counted(md) == (2, 3)
    assert figures(md2) == counted(md2) == (2, 3)
    # The drawer drew a mask on every item: none is theirs to review (the page says 1 of 1).
    assert figures(drawer) == counted(drawer) == (0, 1)
    assert selectors.open_items_for(drawer).filter(round_id=rnd.pk).count() == 0
    # A round no longer under review leaves nobody anything.
    rnd.status = rnd.Status.CANCELLED
    rnd.save(update_fields=["status"])
    assert figures(md2) == counted(md2) == (2, 1)


@pytest.mark.parametrize(
    ("name", "patient", "shown_name", "shown_patient"),
    [
        ("scans/patient_7/cxr_0001.png", "P7", "cxr_0001.png", "P7"),
        ("cxr_0001_manual_mask.png", "P7", "withheld", "P7"),
        ("predicted-unet.png", "drawn-by-md1", "withheld", "withheld"),
        ("modelA.png", "", "withheld", ""),
    ],
)
def test_names_that_speak_of_a_mask_s_source_are_withheld(
    reviewing_round, md, name, patient, shown_name, shown_patient
):
    rnd = reviewing_round(images=2)
    item = rnd.items.select_related("image", "round").first()
    item.image.name, item.image.patient_id = name, patient
    ctx = selectors.review_context(item, md)
    assert (ctx["image_name"], ctx["patient"]) == (shown_name, shown_patient)
