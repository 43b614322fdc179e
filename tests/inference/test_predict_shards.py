"""Stage II prediction in shards: one inference task per shard of targets, idempotent, counted
across shards, and the run finished exactly once whatever the order."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from django.core.files import File
from django.db import close_old_connections, transaction
from PIL import Image

from annotation import imaging, services
from annotation.models import Candidate, GroundTruth, Mask, ReviewItem, Round
from annotation.services import runs
from config import storage
from inference import tasks as inference_tasks
from training.models import ModelVersion, TrainingRun
from training.nets.data import load_mask
from training.nets.predict import mask_png, predict_pipelined, predicted_mask

pytestmark = pytest.mark.django_db
T = TrainingRun.Status


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Weights of the tiny preset's U-Net (untrained: the shards' logic does not depend on
    what the network has learnt), built once for the whole session."""
    import tensorflow as tf

    from training.nets.builders import build_model
    from training.nets.config import preset

    config = preset("tiny")
    model = build_model("unet", "densenet121", input_size=config.input_size, weights=None)
    path = tmp_path_factory.mktemp("tiny") / "unet.weights.h5"
    model.save_weights(str(path))
    tf.keras.backend.clear_session()
    return path


def accept_truth(image):
    mask = services.mask_create(image=image, mask=image.truth, source=Mask.Source.IMPORTED)
    GroundTruth.objects.create(image=image, mask=mask)
    services.image_refresh_status(image=image)


@pytest.fixture
def stage_two_run(make_image, admin_user, tiny_weights, settings):
    """A Stage II round of one network over `targets` images, trained (its model version
    holds the tiny weights) and not yet predicting."""

    def make(*, targets: int = 5) -> TrainingRun:
        for _ in range(2):
            accept_truth(make_image(size=48))
        for _ in range(targets):
            make_image(size=48)
        rnd = services.round_start(
            stage=Round.Stage.STAGE_II,
            started_by=admin_user,
            preset="tiny",
            networks=[("unet", "densenet121")],
        )
        run = rnd.training_runs.get()
        mv = ModelVersion(
            run=run, arch=run.arch, encoder=run.encoder, config=run.config, data_version="test"
        )
        with open(tiny_weights, "rb") as fh:
            mv.weights.save(f"{storage.unique_name('tiny')}.weights.h5", File(fh), save=False)
        mv.save()
        runs.run_started(run_id=run.pk)
        return run

    return make


def _send(run):
    """predictions_send as the services call it, inside their transaction: the tasks go out
    when it commits (here: to the captured on-commit callbacks)."""
    with transaction.atomic():
        return runs.predictions_send(run)


def test_prediction_shards_cover_the_targets_once_in_order():
    ids = [9, 3, 7, 1, 5, 3, 11]
    shards = runs.prediction_shards(ids, 2)
    assert shards == [[1, 3], [5, 7], [9, 11]]
    assert runs.prediction_shards(ids, 256) == [[1, 3, 5, 7, 9, 11]]
    assert runs.prediction_shards([], 4) == []
    many = runs.prediction_shards(list(range(1000, 0, -1)), 256)
    assert [len(s) for s in many] == [256, 256, 256, 232]
    flat = [i for s in many for i in s]
    assert flat == sorted(set(flat)) == list(range(1, 1001))


def test_trained_run_sends_one_predict_task_per_shard(
    stage_two_run, settings, django_capture_on_commit_callbacks
):
    settings.MASKLOOP_PREDICT_SHARD = 2
    run = stage_two_run(targets=5)
    with django_capture_on_commit_callbacks() as sent:
        runs.run_trained(run_id=run.pk)
    run.refresh_from_db()
    assert run.status == T.PREDICTING
    assert run.heartbeat_at is not None
    assert len(sent) == 3  # 2 + 2 + 1 targets

    with django_capture_on_commit_callbacks() as sent_again:
        shards = _send(run)
    assert [len(s) for s in shards] == [2, 2, 1] and len(sent_again) == 3
    assert sorted(i for s in shards for i in s) == sorted(run.target_image_ids)


def test_shards_in_any_order_finish_the_run_once_with_every_candidate(
    stage_two_run, settings, eager_tasks, django_capture_on_commit_callbacks
):
    settings.MASKLOOP_PREDICT_SHARD = 2
    run = stage_two_run(targets=5)
    with django_capture_on_commit_callbacks():
        runs.run_trained(run_id=run.pk)
    run.refresh_from_db()
    with django_capture_on_commit_callbacks():
        shards = _send(run)
    assert len(shards) == 3
    mv = ModelVersion.objects.get(run=run)

    # The last shard first, then the first: progress counts both, the run still predicts.
    inference_tasks.predict(run.pk, shards[2])
    inference_tasks.predict(run.pk, shards[0])
    run.refresh_from_db()
    assert run.status == T.PREDICTING
    assert run.predicted == len(shards[2]) + len(shards[0]) == 3
    assert 0.8 < run.progress < 1.0
    # Re-sent now (as the reconciler would for a stale run), only what is left goes out.
    with django_capture_on_commit_callbacks() as resent:
        assert _send(run) == [shards[1]]
    assert len(resent) == 1

    # A repeated shard adds nothing and does not finish the run.
    inference_tasks.predict(run.pk, shards[2])
    assert Mask.objects.filter(model_version=mv).count() == 3
    run.refresh_from_db()
    assert run.status == T.PREDICTING

    inference_tasks.predict(run.pk, shards[1])
    run.refresh_from_db()
    rnd = Round.objects.get(pk=run.round_id)
    assert run.status == T.SUCCEEDED and run.predicted == 5 and run.finished_at
    assert rnd.status == Round.Status.REVIEWING
    masks = Mask.objects.filter(model_version=mv)
    assert sorted(masks.values_list("image_id", flat=True)) == sorted(run.target_image_ids)
    for item in ReviewItem.objects.filter(round=rnd):
        assert item.candidates.filter(mask__model_version=mv).count() == 1
    for mask in masks.select_related("image"):
        stored = imaging.read_mask_png(storage.read(mask.file.name))
        assert stored.shape == (48, 48) and int(stored.sum()) == mask.area
        # A 1-bit PNG, which training reads as it reads drawn masks (it may become one).
        assert np.array_equal(load_mask(storage.local_copy(mask.file.name)), stored)

    # Late and repeated shards, and a whole-run task, change nothing once the run is done.
    candidates = Candidate.objects.filter(item__round=rnd).count()
    assert "nothing to predict" in inference_tasks.predict(run.pk, shards[0])
    assert "nothing to predict" in inference_tasks.predict(run.pk)
    assert runs.predictions_send(run) == []
    assert masks.count() == 5
    assert Candidate.objects.filter(item__round=rnd).count() == candidates


def test_a_shard_of_images_outside_the_run_predicts_nothing(
    stage_two_run, eager_tasks, django_capture_on_commit_callbacks, make_image
):
    run = stage_two_run(targets=2)
    with django_capture_on_commit_callbacks():
        runs.run_trained(run_id=run.pk)
    stranger = make_image(size=48)
    out = inference_tasks.predict(run.pk, [stranger.pk])
    assert "nothing left" in out
    assert not Mask.objects.filter(model_version__run=run).exists()
    run.refresh_from_db()
    assert run.status == T.PREDICTING and run.predicted == 0


@pytest.mark.django_db(transaction=True)
def test_two_shard_reports_at_once_both_count_and_finish_the_run_once(make_image, admin_user):
    """Shard A's report holds its transaction open while shard B's arrives: B waits for the
    run's lock, then sees A's masks, counts both and completes the run."""
    for _ in range(2):
        accept_truth(make_image(size=48))
    targets = [make_image(size=48) for _ in range(4)]
    rnd = services.round_start(
        stage=Round.Stage.STAGE_II,
        started_by=admin_user,
        preset="tiny",
        networks=[("unet", "densenet121")],
    )
    run = rnd.training_runs.get()
    ModelVersion.objects.create(
        run=run, arch="unet", encoder="densenet121", config=run.config, weights="none.h5"
    )
    TrainingRun.objects.filter(pk=run.pk).update(status=T.PREDICTING)

    def report(image):
        mask = np.zeros((48, 48), bool)
        mask[4:12, 4:12] = True
        data = mask_png(mask)
        return {
            "image": image.pk,
            "file": storage.store(f"masks/{image.pk}/predicted-run{run.pk}.png", data),
            "sha256": imaging.sha256_bytes(data),
            "area": 64,
            "dice": None,
        }

    first, second = [report(i) for i in targets[:2]], [report(i) for i in targets[2:]]
    a_reported, release, errors, added = threading.Event(), threading.Event(), [], {}

    def shard_a():
        try:
            with transaction.atomic():
                added["a"] = runs.run_predictions_add(run_id=run.pk, predictions=first)
                a_reported.set()
                release.wait(10)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
            a_reported.set()
        finally:
            close_old_connections()

    def shard_b():
        try:
            a_reported.wait(10)
            added["b"] = runs.run_predictions_add(run_id=run.pk, predictions=second)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=shard_a), threading.Thread(target=shard_b)]
    for t in threads:
        t.start()
    a_reported.wait(10)
    threading.Event().wait(0.5)  # B is now waiting for the run's lock
    run.refresh_from_db()
    assert run.predicted == 0  # A has not committed yet
    release.set()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert added == {"a": 2, "b": 2}
    run.refresh_from_db()
    rnd.refresh_from_db()
    assert run.status == T.SUCCEEDED and run.predicted == 4
    assert rnd.status == Round.Status.REVIEWING
    assert Candidate.objects.filter(item__round=rnd, mask__model_version__run=run).count() == 4


def test_pipelined_prediction_matches_the_plain_path_in_order():
    """The thread-pooled pipeline returns, in item order, what a plain loop computes."""
    from training.nets.data import preprocess

    rng = np.random.default_rng(0)
    grays = {i: rng.integers(0, 256, (40 + i, 50 - i), dtype=np.uint8) for i in range(11)}
    calls = []

    def forward(x):
        calls.append(len(x))
        return x[..., 0] * 0.8 + 0.1  # a stand-in network: a pure function of its input

    def finish(i, gray, prob):
        return i, predicted_mask(prob, *gray.shape)

    out = list(
        predict_pipelined(
            forward, range(11), load=grays.__getitem__, finish=finish, size=16, batch_size=4
        )
    )
    assert [i for i, _ in out] == list(range(11))
    assert calls == [4, 4, 3]
    for i, mask in out:
        prob = forward(preprocess(grays[i], 16)[None])[0]
        from training.nets.data import resize_probability

        exact = resize_probability(prob, *grays[i].shape)
        differ = mask != (exact >= 0.5)
        assert np.abs(exact[differ] - 0.5).max(initial=0) <= 1 / 255  # 8-bit quantisation only


def test_pipelined_prediction_raises_a_failing_item():
    def load(i):
        if i == 5:
            raise FileNotFoundError(f"image {i} is missing from storage")
        return np.zeros((20, 20), np.uint8)

    results = predict_pipelined(
        lambda x: x[..., 0],
        range(8),
        load=load,
        finish=lambda i, g, p: i,
        size=8,
        batch_size=2,
    )
    got = []
    with pytest.raises(FileNotFoundError, match="image 5"):
        for r in results:
            got.append(r)
    assert got == list(range(len(got))) and len(got) <= 4


def test_predicted_mask_is_the_float_threshold_up_to_8bit_quantisation():
    from training.nets.data import resize_probability

    prob = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    mask = predicted_mask(prob, 500, 700)
    exact = resize_probability(prob, 500, 700)
    differ = mask != (exact >= 0.5)
    assert differ.mean() < 0.01
    assert np.abs(exact[differ] - 0.5).max(initial=0) <= 1 / 255
    assert not predicted_mask(np.full((8, 8), 0.499, np.float32), 30, 30).any()
    assert predicted_mask(np.full((8, 8), 0.5, np.float32), 30, 30).all()
    stored = mask_png(mask)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stored))), mask * np.uint8(255))
