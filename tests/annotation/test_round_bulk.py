"""Opening and withdrawing a round's items in bounded batches, with progress, while MDs decide."""

import pytest

from annotation import services, storage
from annotation.errors import Conflict
from annotation.models import GroundTruth, Image, ReviewItem, Round
from annotation.services.images import image_refresh_status, images_refresh_status
from annotation.services.rounds import round_open_batch, round_withdraw_batch

pytestmark = pytest.mark.django_db

It = ReviewItem.Status


def step(rnd: Round) -> dict:
    """The round's progress without the time its last batch ended."""
    return {k: v for k, v in rnd.progress.items() if k != "at"}


def counts(rnd: Round) -> dict[str, int]:
    return {s: rnd.items.filter(status=s).count() for s in It.values if rnd.items.filter(status=s)}


def test_items_open_in_batches_with_progress_and_shuffled_labels(reviewing_round, settings):
    settings.MASKLOOP_BULK_BATCH = 3
    rnd = reviewing_round(images=10)
    # round_advance opened the first batch in its own transaction; the rest wait for the task.
    assert rnd.status == Round.Status.REVIEWING
    assert counts(rnd) == {It.OPEN: 3, It.PENDING: 7}
    assert step(rnd) == {"step": "opening", "done": 3, "total": 10}
    left, seen = [], []
    while True:
        left.append(round_open_batch(round_id=rnd.pk))
        rnd.refresh_from_db()
        seen.append(step(rnd))
        if not left[-1]:
            break
    assert left == [4, 1, 0]
    assert seen[:2] == [
        {"step": "opening", "done": 6, "total": 10},
        {"step": "opening", "done": 9, "total": 10},
    ]
    assert seen[-1] == {}  # nothing under way
    assert counts(rnd) == {It.OPEN: 10}
    assert set(Image.objects.values_list("status", flat=True)) == {Image.Status.IN_REVIEW}
    for item in rnd.items.all():
        labels = sorted(item.candidates.values_list("label", flat=True))
        assert labels == [chr(ord("A") + i) for i in range(len(labels))] and len(labels) >= 2
    assert round_open_batch(round_id=rnd.pk) == 0  # a late duplicate does nothing


def test_the_task_chain_opens_every_batch_and_warms_display_copies(
    reviewing_round, settings, eager_tasks, django_capture_on_commit_callbacks
):
    settings.MASKLOOP_BULK_BATCH = 2
    rnd = reviewing_round(images=5)
    assert counts(rnd) == {It.OPEN: 2, It.PENDING: 3}
    with django_capture_on_commit_callbacks(execute=True) as sent:
        from annotation import tasks

        tasks.round_open_batch.delay(rnd.pk)
    rnd.refresh_from_db()
    assert counts(rnd) == {It.OPEN: 5}
    assert rnd.progress == {}
    # Two more batches: each re-sent the chain and asked for its overlays to be warmed.
    assert len(sent) >= 3
    candidate = rnd.items.last().candidates.select_related("mask").first()
    cached = storage.display_copy(candidate.mask.file.name, 512, form="overlay")
    assert cached.startswith(b"\x89PNG")


def test_md_decides_on_the_first_batch_and_the_round_waits_for_the_rest(
    reviewing_round, md, settings
):
    settings.MASKLOOP_BULK_BATCH = 2
    rnd = reviewing_round(images=4)
    for item in rnd.items.filter(status=It.OPEN):
        services.decision_create(item=item, reviewer=md, choice="A", seconds=2)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.REVIEWING  # two items still pending: not done
    assert round_open_batch(round_id=rnd.pk) == 0
    for item in rnd.items.filter(status=It.OPEN):
        services.decision_create(item=item, reviewer=md, choice="A", seconds=2)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE
    assert GroundTruth.objects.filter(item__round=rnd).count() == 4


def test_cancel_withdraws_in_batches_and_a_decision_meanwhile_is_refused_at_once(
    reviewing_round, md, admin_user, settings
):
    settings.MASKLOOP_BULK_BATCH = 3
    rnd = reviewing_round(images=10)
    while round_open_batch(round_id=rnd.pk):
        pass
    services.round_cancel(round=rnd, by=admin_user)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.CANCELLED and rnd.failure_reason == "cancelled by boss"
    assert step(rnd) == {"step": "withdrawing", "done": 3, "total": 10}
    assert counts(rnd) == {It.OPEN: 7, It.CANCELLED: 3}
    # An item not withdrawn yet still shows as open: a decision on it meanwhile is refused in
    # words (the round is cancelled), at once, without waiting for the withdrawal.
    late = rnd.items.filter(status=It.OPEN).last()
    with pytest.raises(Conflict, match="cancelled; it takes no more decisions"):
        services.decision_create(item=late, reviewer=md, choice="B", seconds=4)
    left = []
    while True:
        left.append(round_withdraw_batch(round_id=rnd.pk))
        if not left[-1]:
            break
    assert left == [4, 1, 0]
    rnd.refresh_from_db()
    assert rnd.progress == {}
    assert counts(rnd) == {It.CANCELLED: 10}
    assert not GroundTruth.objects.filter(item__round=rnd).exists()
    assert set(Image.objects.values_list("status", flat=True)) == {Image.Status.MANUAL}
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.CANCELLED
    assert round_withdraw_batch(round_id=rnd.pk) == 0


def test_bulk_status_refresh_agrees_with_the_one_image_rule(reviewing_round, md, make_image):
    rnd = reviewing_round(images=4)
    first, second = rnd.items.all()[:2]
    services.decision_create(item=first, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=second, reviewer=md, choice="none", seconds=1)
    make_image()  # unannotated
    make_image(covid=False)  # a control: accepted empty mask
    expected = {img.pk: image_refresh_status(image=img).status for img in Image.objects.all()}
    assert len(set(expected.values())) >= 4
    Image.objects.update(status=Image.Status.IN_ROUND)
    changed = images_refresh_status(image_ids=list(expected))
    assert changed == sum(1 for s in expected.values() if s != Image.Status.IN_ROUND)
    assert dict(Image.objects.values_list("pk", "status")) == expected


def test_the_dashboard_shows_the_bulk_step_and_its_progress(reviewing_round, admin_user, api):
    rnd = reviewing_round(images=5)
    rnd.progress = {"step": "opening", "done": 2, "total": 5}
    rnd.save(update_fields=["progress"])
    client = api(admin_user)
    body = client.get(f"/api/rounds/{rnd.number}/").json()
    assert body["progress"] == {"step": "opening", "done": 2, "total": 5}
    assert "Opening items: 2 of 5" in client.get(f"/rounds/{rnd.number}/").content.decode()
    assert "opening 2/5" in client.get("/rounds/").content.decode()


def test_a_lost_chain_is_found_and_resumes(reviewing_round, admin_user, settings):
    from annotation.selectors import round_bulk_steps

    settings.MASKLOOP_BULK_BATCH = 2
    rnd = reviewing_round(images=4)
    assert round_bulk_steps() == [("annotation.tasks.round_open_batch", rnd.pk)]
    while round_open_batch(round_id=rnd.pk):
        pass
    assert round_bulk_steps() == []
    services.round_cancel(round=rnd, by=admin_user)
    assert round_bulk_steps() == [("annotation.tasks.round_withdraw_batch", rnd.pk)]
    assert round_withdraw_batch(round_id=rnd.pk) == 0
    assert round_bulk_steps() == []


def test_statistics_count_adjudication_but_time_only_reviewers(
    reviewing_round, md, md2, admin_user
):
    from annotation.selectors import round_statistics

    rnd = reviewing_round(images=2, reviewers=2)
    tied, agreed = rnd.items.all()
    services.decision_create(item=tied, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=tied, reviewer=md2, choice="B", seconds=4)
    services.decision_create(item=agreed, reviewer=md, choice="A", seconds=2)
    services.decision_create(item=agreed, reviewer=md2, choice="A", seconds=5)
    stats = round_statistics(rnd)
    assert stats["items"]["adjudication"] == 1 and stats["items"]["accepted"] == 1
    assert stats["mean_agreement"] == 0.75
    tied.refresh_from_db()
    services.decision_adjudicate(item=tied, admin=admin_user, choice="A", seconds=100)
    stats = round_statistics(rnd)
    assert stats["decisions"] == 5
    assert stats["decisions_per_md"] == {"boss": 1, "md1": 2, "md2": 2}
    assert stats["median_seconds"] == 3.0  # of 1, 2, 4, 5: the admin's 100 s is not timed
    assert stats["mean_seconds"] == 3.0
    assert stats["items"]["accepted"] == 2 and stats["redraw_rate"] == 0.0
