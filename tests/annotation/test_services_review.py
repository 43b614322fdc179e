"""Blind picks, majorities, ties, redraws: the review rules of Stage I and Stage II."""

import pytest

from annotation import imaging, services
from annotation.errors import Conflict, DomainError
from annotation.models import Decision, GroundTruth, Image, Mask, ReviewItem, Round
from tests.conftest import finish_runs_with, shifted

pytestmark = pytest.mark.django_db


def test_stage_one_opens_items_with_manual_and_machine_candidates(reviewing_round):
    rnd = reviewing_round(images=4)
    assert rnd.status == Round.Status.REVIEWING
    assert rnd.training_runs.count() == 2 * 2  # 2 networks × 2 folds
    for item in rnd.items.all():
        labels = sorted(item.candidates.values_list("label", flat=True))
        assert labels == ["A", "B", "C"]
        sources = sorted(item.candidates.values_list("mask__source", flat=True))
        assert sources == ["drawn", "predicted", "predicted"]
        assert item.status == ReviewItem.Status.OPEN
        assert item.image.status == Image.Status.IN_REVIEW


def test_stage_one_folds_never_split_a_patient(make_image, md, admin_user):
    for patient in ["A", "A", "B", "B", "C", "D"]:
        make_image(manual_by=md, patient=patient)
    rnd = services.round_start(
        stage="I", started_by=admin_user, folds=3, preset="tiny", networks=[("unet", "densenet121")]
    )
    folds_of = {}
    for item in rnd.items.select_related("image"):
        folds_of.setdefault(item.image.patient_id, set()).add(item.fold)
    assert all(len(f) == 1 for f in folds_of.values())
    for run in rnd.training_runs.all():
        trained = {pair[0] for pair in run.train_image_ids}
        assert trained.isdisjoint(run.target_image_ids)


def test_a_pick_makes_the_chosen_mask_the_ground_truth(reviewing_round, md):
    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    chosen = item.candidates.get(label="B")
    services.decision_create(item=item, reviewer=md, choice="B", seconds=4.2)
    item.refresh_from_db()
    gt = GroundTruth.objects.get(image=item.image)
    assert gt.mask == chosen.mask
    assert item.status == ReviewItem.Status.ACCEPTED
    assert item.image.ground_truths.count() == 1
    item.image.refresh_from_db()
    assert item.image.status == Image.Status.ACCEPTED


def test_round_is_done_when_every_item_is_decided_and_statistics_add_up(reviewing_round, md):
    rnd = reviewing_round(images=3)
    for item in rnd.items.all():
        manual = item.candidates.get(mask__source="drawn").label
        machine = item.candidates.exclude(label=manual).first().label
        services.decision_create(
            item=item, reviewer=md, choice=machine if item.pk % 2 else manual, seconds=3.0
        )
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE
    from annotation.selectors import round_statistics

    stats = round_statistics(rnd)
    expected = sum(1 for item in rnd.items.all() if item.pk % 2)
    assert stats["machine_preferred"] == expected
    assert stats["manual_compared"] == 3
    assert stats["median_seconds"] == 3.0
    assert stats["decisions_per_md"] == {"md1": 3}


def test_a_second_decision_by_the_same_reviewer_is_refused_and_nothing_changes(
    reviewing_round, md, md2
):
    rnd = reviewing_round(images=2, reviewers=2)
    item = rnd.items.first()
    services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    with pytest.raises(Conflict, match="already decided"):
        services.decision_create(item=item, reviewer=md, choice="B", seconds=1)
    assert Decision.objects.filter(item=item).count() == 1
    assert Decision.objects.get(item=item).candidate.label == "A"


def test_a_pick_naming_another_round_is_refused(reviewing_round, md):
    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    with pytest.raises(DomainError, match=f"belongs to round {rnd.number}, not round 99"):
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1, round_number=99)
    assert not Decision.objects.exists()


def test_an_unknown_label_is_refused_with_the_valid_choices(reviewing_round, md):
    item = reviewing_round(images=2).items.first()
    with pytest.raises(DomainError, match="choose one of A, B, C or 'none'"):
        services.decision_create(item=item, reviewer=md, choice="F", seconds=1)
    assert not Decision.objects.exists()


def test_majority_wins_and_agreement_is_recorded(reviewing_round, md, md2, md3):
    rnd = reviewing_round(images=2, reviewers=3)
    item = rnd.items.first()
    services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=item, reviewer=md2, choice="C", seconds=1)
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.OPEN  # waits for the third reviewer
    services.decision_create(item=item, reviewer=md3, choice="C", seconds=1)
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ACCEPTED
    assert item.agreement == pytest.approx(2 / 3)
    assert GroundTruth.objects.get(image=item.image).mask == item.candidates.get(label="C").mask


def test_a_tie_goes_to_an_admin(reviewing_round, md, md2, admin_user):
    rnd = reviewing_round(images=2, reviewers=2)
    item = rnd.items.first()
    services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    services.decision_create(item=item, reviewer=md2, choice="none", seconds=1)
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ADJUDICATION
    assert not GroundTruth.objects.filter(image=item.image).exists()
    services.decision_adjudicate(item=item, admin=admin_user, choice="A")
    item.refresh_from_db()
    assert item.status == ReviewItem.Status.ACCEPTED
    assert GroundTruth.objects.get(image=item.image).decision.is_adjudication


def test_none_sends_the_image_to_redraw_and_the_drawing_becomes_ground_truth(reviewing_round, md):
    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    services.decision_create(item=item, reviewer=md, choice="none", seconds=2)
    image = Image.objects.get(pk=item.image_id)
    assert image.status == Image.Status.REDRAW
    start = item.candidates.get(label="A").mask
    drawing = imaging.read_mask_png(
        imaging.encode_mask(shifted(image, item.round.training_runs.first()))
    )
    mask = services.mask_draw(
        image=image, author=md, data=imaging.encode_mask(drawing), based_on=start
    )
    item.refresh_from_db()
    image.refresh_from_db()
    assert item.status == ReviewItem.Status.REDRAWN
    assert image.status == Image.Status.ACCEPTED
    gt = GroundTruth.objects.get(image=image)
    assert gt.mask == mask and gt.item == item and mask.based_on == start
    # the rejected candidates are all still there, unchanged
    assert image.masks.count() == 1 + 2 + 1


def test_stage_two_trains_on_accepted_masks_and_predicts_the_rest(
    reviewing_round, make_image, md, admin_user
):
    rnd = reviewing_round(images=3)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    fresh = [make_image() for _ in range(3)]
    stage2 = services.round_start(
        stage="II",
        started_by=admin_user,
        preset="tiny",
        networks=[("unet", "densenet121"), ("dla", "densenet121")],
    )
    assert stage2.training_runs.count() == 2
    run = stage2.training_runs.first()
    assert len(run.train_image_ids) == 3
    assert sorted(run.target_image_ids) == sorted(i.pk for i in fresh)
    finish_runs_with(stage2, shifted)
    for item in stage2.items.all():
        assert item.candidates.count() == 2
        assert not item.candidates.filter(mask__source="drawn").exists()


def test_only_one_active_round_at_a_time(reviewing_round, admin_user):
    reviewing_round(images=2)
    with pytest.raises(Conflict, match="another round"):
        services.round_start(stage="II", started_by=admin_user)


def test_stage_one_without_manual_masks_says_what_to_do(admin_user, make_image):
    make_image()
    with pytest.raises(DomainError, match="MD-drawn mask"):
        services.round_start(stage="I", started_by=admin_user)
    assert not Round.objects.exists()


def test_cancel_withdraws_open_items_but_keeps_decisions(reviewing_round, md, admin_user):
    rnd = reviewing_round(images=3)
    first = rnd.items.first()
    services.decision_create(item=first, reviewer=md, choice="A", seconds=1)
    services.round_cancel(round=rnd, by=admin_user)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.CANCELLED
    assert rnd.items.filter(status=ReviewItem.Status.CANCELLED).count() == 2
    assert GroundTruth.objects.filter(image=first.image).exists()
    for item in rnd.items.filter(status=ReviewItem.Status.CANCELLED):
        assert Image.objects.get(pk=item.image_id).status == Image.Status.MANUAL


def test_masks_are_versioned_never_overwritten(make_image, md):
    image = make_image(manual_by=md)
    first = image.masks.get()
    services.mask_draw(image=image, author=md, data=imaging.encode_mask(image.truth))
    assert list(image.masks.values_list("version", flat=True)) == [1, 2]
    first.refresh_from_db()
    assert Mask.objects.get(pk=first.pk).sha256 == first.sha256
