"""Running a training or prediction task twice leaves no duplicate model or candidate."""

import pytest

from annotation import services
from annotation.models import Candidate, Mask, Round
from inference import tasks as inference_tasks
from training import tasks as training_tasks
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


def test_train_and_predict_twice_change_nothing_the_second_time(
    make_image, md, admin_user, eager_tasks
):
    for _ in range(4):
        make_image(manual_by=md, size=48)
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        overrides={"epochs": 3},  # not the preset's 30: every epoch is recorded, however many
        networks=[("unet", "densenet121")],
    )
    run = rnd.training_runs.order_by("fold").first()

    training_tasks.train(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.PREDICTING, run.failure_reason
    assert len(run.loss_history) == run.epochs == run.epoch == 3
    mv = ModelVersion.objects.get(run=run)
    assert mv.data_version and mv.config["arch"] == "unet"

    again = training_tasks.train(run.pk)
    assert "nothing to train" in again
    assert ModelVersion.objects.filter(run=run).count() == 1

    inference_tasks.predict(run.pk)
    run.refresh_from_db()
    assert run.status == TrainingRun.Status.SUCCEEDED
    predicted = Mask.objects.filter(model_version=mv).count()
    assert predicted == len(run.target_image_ids) > 0
    candidates = Candidate.objects.filter(item__round=rnd).count()

    inference_tasks.predict(run.pk)
    training_tasks.train(run.pk)
    assert Mask.objects.filter(model_version=mv).count() == predicted
    assert Candidate.objects.filter(item__round=rnd).count() == candidates
    for mask in Mask.objects.filter(model_version=mv).select_related("image"):
        assert (mask.image.width, mask.image.height) == (48, 48)


def test_a_failing_training_records_its_reason_and_fails_the_round(
    make_image, md, admin_user, eager_tasks
):
    for _ in range(2):
        make_image(manual_by=md, size=48)
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        networks=[("unet", "densenet121")],
    )
    run = rnd.training_runs.first()
    # A mask file lost from storage: the kind of failure an admin must be told about in words.
    mask = Mask.objects.get(pk=run.train_image_ids[0][1])
    import os

    os.remove(mask.file.path)
    training_tasks.train(run.pk)
    run.refresh_from_db()
    rnd.refresh_from_db()
    assert run.status == TrainingRun.Status.FAILED
    assert f"{mask.file.name} is missing from storage" in run.failure_reason
    assert rnd.status == Round.Status.FAILED
    assert str(run) in rnd.failure_reason
