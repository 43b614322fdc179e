"""Pretraining as a training-queue task, a round starting from its encoder (or from a local
weights file), and the lung post-filter of a round's candidates."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files import File
from django.core.management import call_command

from annotation import imaging, services
from annotation.models import GroundTruth, ImageClass, Mask, Role, Round
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


@pytest.fixture(scope="class")
def shared(django_db_setup, django_db_blocker, tmp_path_factory):
    """One finished tiny pretraining of DenseNet-121 on the platform's images, run by the real
    task (eagerly, once its row is committed), for every test of `TestFromOnePretraining`.

    A pretraining costs most of a minute on two CPU cores, so the class shares one: its rows
    live in a transaction of the class's own that each test's transaction nests in (and rolls
    back to), and its files in a media folder of the class's own; both go when the class ends.
    """
    from django.db import transaction
    from django.test import TestCase, override_settings

    from config.celery import app
    from tests.conftest import make_user

    root = tmp_path_factory.mktemp("pretrained")
    media = root / "media"
    with (
        django_db_blocker.unblock(),
        override_settings(
            MEDIA_ROOT=str(media),
            MASKLOOP_WORK_DIR=root / "work",
            MASKLOOP_CACHE_DIR=root / "cache",
            MASKLOOP_SCREEN_MIN_SIDE=32,  # as the conftest's screening_small_images
            MASKLOOP_NEAR_DUPLICATE_DISTANCE=4,
        ),
    ):
        outer = transaction.atomic()
        outer.__enter__()
        try:
            admin = make_user("pretrainer", Role.ADMIN)
            drawer = make_user("pretrain-drawer", Role.MD)
            _stage_one_images(_shared_image(), drawer)
            app.loader.import_default_modules()  # as the eager_tasks fixture
            app.conf.update(task_always_eager=True, task_eager_propagates=True)
            try:
                with TestCase.captureOnCommitCallbacks(execute=True):
                    row = services.encoder_pretrain_start(
                        encoder="densenet121",
                        preset="tiny",
                        started_by=admin,
                        overrides={"epochs": 3, "batch_size": 4},
                    )
            finally:
                app.conf.update(task_always_eager=False, task_eager_propagates=False)
            row.refresh_from_db()
            yield {"row": row, "admin": admin, "media": str(media)}
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _shared_image():
    """`make_image` for the class's transaction (the conftest's is per test): phantoms of
    seeds no other test here uses, imported through the real service."""
    from annotation.phantoms import md_drawing

    seeds = iter(range(700, 800))

    def make(*, covid: bool = True, patient: str = "", manual_by=None):
        n = next(seeds)
        phantom = make_phantom(n, size=64, covid=covid)
        image = services.image_create(
            data=imaging.encode_png(phantom.image),
            name=f"phantom_{n:04d}.png",
            source="tests",
            image_class=ImageClass.COVID if covid else ImageClass.NORMAL,
            patient_id=patient,
        )
        if manual_by is not None:
            drawing = md_drawing(phantom.infection, n)
            services.mask_draw(image=image, author=manual_by, data=imaging.encode_mask(drawing))
        return image

    return make


def _file_layers(name: str) -> dict[str, list[np.ndarray]]:
    from training.nets.pretrain import _file_layers

    return _file_layers(str(storage.local_copy(name)))


class TestFromOnePretraining:
    """The tests that need a finished pretraining share the class's one (see `shared`)."""

    @pytest.fixture(autouse=True)
    def media_root(self, settings, tmp_path, shared):
        """Overrides the conftest's: the media folder is the class's, where its encoder's file
        lies; work and cache folders stay the test's own."""
        settings.MEDIA_ROOT = shared["media"]
        settings.MASKLOOP_WORK_DIR = tmp_path / "work"
        settings.MASKLOOP_CACHE_DIR = tmp_path / "cache"
        return settings.MEDIA_ROOT

    @pytest.fixture
    def pretrained(self, shared, eager_tasks):
        """The class's pretraining, tasks run at once as where it was made."""
        return PretrainedEncoder.objects.get(pk=shared["row"].pk)

    @pytest.fixture
    def admin(self, shared):
        return shared["admin"]

    def test_the_pretraining_task_stores_an_encoder_and_a_round_starts_from_it(
        self, pretrained, admin, api
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

        response = api(admin).post(
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
        for layer, fresh_layer in zip(
            encoder_of(model).layers, encoder_of(fresh).layers, strict=True
        ):
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
        self, pretrained, admin, django_capture_on_commit_callbacks
    ) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            rnd = services.round_start(
                stage=Round.Stage.STAGE_I,
                started_by=admin,
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
        self, pretrained, admin, api
    ) -> None:
        client = api(admin)
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
