"""The final stage: infection-map networks and a Grad-CAM classifier trained on the accepted
masks, measured on a patient-grouped held-out split, metrics stored with each model version."""

import numpy as np
import pytest

from annotation import services
from annotation.errors import DomainError
from annotation.models import GroundTruth, Mask, Round
from inference import services as inference_services
from inference import tasks as inference_tasks
from training import tasks as training_tasks

pytestmark = pytest.mark.django_db

LEVEL_KEYS = {
    "sensitivity",
    "sensitivity_ci",
    "specificity",
    "precision",
    "f1",
    "f2",
    "accuracy",
    "auc",
    "confusion",
    "pr_curve",
}


def accept_truth(image):
    mask = services.mask_create(image=image, mask=image.truth, source=Mask.Source.IMPORTED)
    GroundTruth.objects.create(image=image, mask=mask)
    services.image_refresh_status(image=image)


def test_final_round_trains_measures_and_serves_its_networks(make_image, admin_user, eager_tasks):
    for i in range(6):
        accept_truth(make_image(size=48, patient=f"C{i}"))
    for i in range(4):
        make_image(size=48, covid=False, patient=f"N{i}")
    rnd = services.round_start(
        stage=Round.Stage.FINAL,
        started_by=admin_user,
        preset="tiny",
        overrides={"epochs": 3},  # not the preset's 30: what is measured, not how well
        networks=[("unet", "densenet121")],
        test_fraction=0.3,
    )
    runs = list(rnd.training_runs.order_by("id"))
    assert [(r.kind, r.arch) for r in runs] == [("segmentation", "unet"), ("classifier", "")]
    train = {pair[0] for pair in runs[0].train_image_ids}
    assert train.isdisjoint(runs[0].target_image_ids)
    assert not rnd.items.exists()  # nothing to review in the final stage

    for run in runs:
        training_tasks.train(run.pk)
        inference_tasks.evaluate(run.pk)
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.DONE, rnd.failure_reason

    [segmentation] = inference_services.final_model_versions()
    metrics = segmentation.metrics
    assert metrics["test_images"] == len(runs[0].target_image_ids) >= 2
    assert set(metrics["pixel"]) >= LEVEL_KEYS and set(metrics["image"]) >= LEVEL_KEYS
    confusion = metrics["image"]["confusion"]
    assert sum(confusion.values()) == metrics["test_images"]
    pixel = metrics["pixel"]["confusion"]
    assert sum(pixel.values()) == metrics["test_images"] * 48 * 48
    curve = metrics["pixel"]["pr_curve"]
    assert len(curve["precision"]) == len(curve["recall"]) <= 101
    assert np.all(np.isfinite(metrics["train_loss"]))

    classifiers = inference_services.final_classifiers()
    assert set(classifiers) == {"densenet121"}
    assert "image" in classifiers["densenet121"].metrics


def test_final_round_needs_both_covid_and_control_masks(make_image, admin_user):
    for i in range(4):
        accept_truth(make_image(size=48, patient=f"C{i}"))
    with pytest.raises(DomainError, match="COVID-19 and controls both"):
        services.round_start(stage=Round.Stage.FINAL, started_by=admin_user)
