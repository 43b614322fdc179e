"""Pretraining as a training-queue task, a round starting from its encoder (or from a local
weights file), and the lung post-filter of a round's candidates."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files import File
from django.core.management import call_command

from annotation import imaging, services
from annotation.models import GroundTruth, ImageClass, Mask, Round
from annotation.phantoms import make_phantom
from annotation.services import runs
from config import storage
from training import services as training_services
from training.models import ModelVersion, PretrainedEncoder

pytestmark = pytest.mark.django_db
P = PretrainedEncoder.Status


def _stage_one_images(make_image, drawer, n: int = 6) -> None:
    for i in range(n):
        make_image(covid=True, manual_by=drawer, patient=f"S{i}")
    for i in range(2):
        make_image(covid=False, patient=f"C{i}")


@pytest.fixture
def pretrained(make_image, drawer, admin_user, eager_tasks, django_capture_on_commit_callbacks):
    """A finished tiny pretraining of DenseNet-121 on the platform's images, run by the real
    task (eagerly, once its row is committed)."""
    _stage_one_images(make_image, drawer)
    with django_capture_on_commit_callbacks(execute=True):
        row = services.encoder_pretrain_start(
            encoder="densenet121",
            preset="tiny",
            started_by=admin_user,
            overrides={"epochs": 3, "batch_size": 4},
        )
    row.refresh_from_db()
    return row


def _file_layers(name: str) -> dict[str, list[np.ndarray]]:
    from training.nets.pretrain import _file_layers

    return _file_layers(str(storage.local_copy(name)))


def test_the_pretraining_task_stores_an_encoder_and_a_round_starts_from_it(
    pretrained, admin_user, api
) -> None:
    import tensorflow as tf

    from training.nets.builders import build_model, encoder_of
    from training.nets.fit import initial_model

    row = pretrained
    assert row.status == P.SUCCEEDED, row.failure_reason
    assert row.weights.name.startswith("encoders/") or "pretrain-" in row.weights.name
    assert len(row.image_ids) == 8  # labelled or not: every image a round may use
    assert row.epoch == row.epochs == 3 and len(row.loss_history) == 3
    assert row.metrics["layers"] > 100 and row.metrics["method"] == "simmim"

    response = api(admin_user).post(
        "/api/rounds/",
        {
            "stage": "I",
            "preset": "tiny",
            "folds": 2,
            "networks": [["unet", "densenet121"], ["unet", "resnet50"]],
            "pretrained_encoder": row.pk,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    rnd = Round.objects.get(number=response.json()["number"])
    assert rnd.config["start_weights"]["pretrained"] == row.pk
    assert rnd.config["start_weights"]["encoders"] == ["densenet121"]
    by_encoder = {run.encoder: run for run in rnd.training_runs.filter(fold=0)}
    assert by_encoder["densenet121"].config["encoder_weights"] == row.weights.name
    assert by_encoder["resnet50"].config["encoder_weights"] is None  # from scratch, recorded

    # The round's network as its training starts: every encoder layer is the pretrained one.
    tf.keras.backend.clear_session()
    model, report = initial_model(training_services.resolved_config(by_encoder["densenet121"]))
    assert report is not None and report["matched"] == report["layers"] == row.metrics["layers"]
    stored = _file_layers(row.weights.name)
    fresh = build_model("unet", "densenet121", input_size=32)
    differing = 0
    for layer, fresh_layer in zip(encoder_of(model).layers, encoder_of(fresh).layers, strict=True):
        if not layer.weights:
            continue
        for got, want in zip(layer.get_weights(), stored[layer.name], strict=True):
            np.testing.assert_array_equal(got, want)
        differing += any(
            not np.array_equal(a, b)
            for a, b in zip(layer.get_weights(), fresh_layer.get_weights(), strict=True)
        )
    assert differing > 0.9 * report["layers"]


def test_a_round_trains_from_the_pretrained_encoder_and_says_how_many_layers_matched(
    pretrained, admin_user, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        rnd = services.round_start(
            stage=Round.Stage.STAGE_I,
            started_by=admin_user,
            preset="tiny",
            folds=2,
            networks=[("unet", "densenet121")],
            overrides={"epochs": 1},
            pretrained_encoder=pretrained.pk,
        )
    rnd.refresh_from_db()
    assert rnd.status == Round.Status.REVIEWING, rnd.failure_reason
    for run in rnd.training_runs.all():
        start = run.model_version.metrics["start_weights"]
        assert start["matched"] == start["layers"] == pretrained.metrics["layers"]
        assert run.model_version.config["encoder_weights"] == pretrained.weights.name


def test_starting_weights_that_cannot_apply_are_refused_in_a_sentence(
    pretrained, admin_user, api
) -> None:
    client = api(admin_user)
    resnet_only = client.post(
        "/api/rounds/",
        {
            "stage": "I",
            "networks": [["unet", "resnet50"]],
            "pretrained_encoder": pretrained.pk,
        },
        format="json",
    )
    assert resnet_only.status_code == 400
    assert (
        "densenet121 encoder, and none of the round's networks uses one"
        in (resnet_only.json()["detail"])
    )
    queued = PretrainedEncoder.objects.create(encoder="densenet121", config={}, epochs=1)
    unfinished = client.post(
        "/api/rounds/", {"stage": "I", "pretrained_encoder": queued.pk}, format="json"
    )
    assert unfinished.status_code == 400
    assert f"pretrained encoder #{queued.pk} is queued, not done" in unfinished.json()["detail"]
    both = client.post(
        "/api/rounds/",
        {"stage": "I", "pretrained_encoder": pretrained.pk, "weights_file": "/w/notop.h5"},
        format="json",
    )
    assert both.status_code == 400 and "not both" in both.json()["detail"]
    assert not Round.objects.exists()


def test_a_local_weights_file_still_starts_a_round(
    make_image, drawer, admin_user, api, tmp_path
) -> None:
    """An ImageNet-style "notop" file on the workers (here: random weights), as hospitals
    without internet have them."""
    import tensorflow as tf

    from training.nets.builders import encoder_of
    from training.nets.fit import initial_model

    _stage_one_images(make_image, drawer)
    backbone = tf.keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(32, 32, 3)
    )
    path = tmp_path / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    backbone.save_weights(str(path))
    response = api(admin_user).post(
        "/api/rounds/",
        {"stage": "I", "preset": "tiny", "folds": 2, "weights_file": str(path)},
        format="json",
    )
    assert response.status_code == 201, response.json()
    run = Round.objects.get().training_runs.order_by("id")[0]
    assert run.config["weights"] == str(path) and run.config["encoder_weights"] is None
    model, report = initial_model(training_services.resolved_config(run))
    assert report is None
    for got, want in zip(encoder_of(model).get_weights(), backbone.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_the_management_command_starts_a_pretraining(make_image, drawer, capsys) -> None:
    _stage_one_images(make_image, drawer, n=2)
    call_command("pretrain", "--encoder", "resnet50", "--preset", "tiny", "--epochs", "2")
    row = PretrainedEncoder.objects.get()
    assert (row.encoder, row.status, row.epochs) == ("resnet50", P.QUEUED, 2)
    assert f"#{row.pk}" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the lung filter


@pytest.fixture(scope="module")
def everywhere_weights(tmp_path_factory):
    """A tiny U-Net that predicts infection everywhere (its output bias is +10)."""
    import tensorflow as tf

    from training.nets.builders import build_model

    model = build_model("unet", "densenet121", input_size=32)
    conv = model.get_layer("final_conv")
    kernel, bias = conv.get_weights()
    conv.set_weights([np.zeros_like(kernel), np.full_like(bias, 10.0)])
    path = tmp_path_factory.mktemp("lungs") / "everywhere.weights.h5"
    model.save_weights(str(path))
    tf.keras.backend.clear_session()
    return path


def _import(n: int, *, lungs: bool):
    phantom = make_phantom(500 + n, size=64, covid=True)
    image = services.image_create(
        data=imaging.encode_png(phantom.image),
        name=f"lungs_{n}.png",
        source="tests",
        image_class=ImageClass.COVID,
        patient_id=f"L{n}",
        lung_mask_data=imaging.encode_mask(phantom.lungs) if lungs else None,
    )
    return image, phantom


def test_the_lung_filter_clears_candidates_outside_the_lungs_and_records_it(
    admin_user, everywhere_weights, eager_tasks, django_capture_on_commit_callbacks
) -> None:
    from scipy import ndimage

    for n in range(2):  # ground truth to train Stage II on
        image, phantom = _import(n, lungs=False)
        mask = services.mask_create(
            image=image, mask=phantom.infection, source=Mask.Source.IMPORTED
        )
        GroundTruth.objects.create(image=image, mask=mask)
        services.image_refresh_status(image=image)
    with_lungs, phantom = _import(10, lungs=True)
    without_lungs, _ = _import(11, lungs=False)
    rnd = services.round_start(
        stage=Round.Stage.STAGE_II,
        started_by=admin_user,
        preset="tiny",
        networks=[("unet", "densenet121")],
        lung_filter=True,
        lung_margin=5.0,
    )
    assert rnd.config["lung_filter"] == {"margin_percent": 5.0}
    run = rnd.training_runs.get()
    assert set(run.inputs["lung_filter"]["lungs"]) == {str(with_lungs.pk)}
    mv = ModelVersion(
        run=run, arch=run.arch, encoder=run.encoder, config=run.config, data_version="test"
    )
    with open(everywhere_weights, "rb") as fh:
        mv.weights.save(f"{storage.unique_name('all')}.weights.h5", File(fh), save=False)
    mv.save()
    runs.run_started(run_id=run.pk)
    with django_capture_on_commit_callbacks(execute=True):
        runs.run_trained(run_id=run.pk)  # predicts once committed (eager tasks)

    def candidate(image):
        mask = Mask.objects.get(image=image, model_version=mv)
        return imaging.read_mask_png(storage.read(mask.file.name))

    filtered = candidate(with_lungs)
    allowed = ndimage.distance_transform_edt(~phantom.lungs) <= 3  # 5 % of 64 px
    assert filtered.any() and not (filtered & ~allowed).any()
    assert filtered[phantom.lungs].all()
    assert candidate(without_lungs).all()  # unchanged: the network's "everywhere"
    mv.refresh_from_db()
    record = mv.metrics["lung_filter_by_image"]
    assert record[str(with_lungs.pk)] == {
        "filter": "applied",
        "removed": int(64 * 64 - filtered.sum()),
    }
    assert record[str(without_lungs.pk)] == {"filter": "no lung mask", "removed": 0}
