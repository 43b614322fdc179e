"""The draw page's machine starting mask: the newest finished round's network predicts an image
waiting for a first drawing; the mask is kept as a machine mask (provenance its model version)
and becomes the drawing's `based_on`. Never before any model, and never for an image in a round
or under review (blindness)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from annotation import imaging, selectors, services
from annotation.models import Image, Mask, ReviewItem, Round
from inference import analysis
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db
SIZE = 32


@pytest.fixture(scope="module")
def unet_weights(tmp_path_factory) -> Iterator[Path]:
    """A randomly initialised 32-px U-Net, saved once for the module: the plumbing, not the
    network's skill, is under test."""
    import tensorflow as tf

    from training.nets.builders import build_model

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("weights") / "unet.weights.h5"
    build_model("unet", "densenet121", input_size=SIZE).save_weights(str(path))
    tf.keras.backend.clear_session()
    yield path
    analysis.model_cache_clear()


def network(
    admin_user, weights: Path, *, number: int, status: str = Round.Status.DONE, stage="I"
) -> ModelVersion:
    from training.nets.config import TrainConfig

    name = f"models/starting-{number}.weights.h5"
    target = Path(settings.MEDIA_ROOT) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, target)
    rnd = Round.objects.create(
        number=number, stage=stage, status=status, started_by=admin_user, config={"preset": "tiny"}
    )
    config = TrainConfig(arch="unet", encoder="densenet121", input_size=SIZE).to_dict()
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        fold=0,
        config=config,
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        run=run, arch="unet", encoder="densenet121", config=config, weights=name, data_version="t"
    )


def start(api, md, image: Image):
    return api(md).post(f"/api/images/{image.pk}/starting-mask/")


def test_no_model_yet_no_button_and_a_sentence(api, client, md, make_image):
    image = make_image()
    response = start(api, md, image)
    assert response.status_code == 409
    assert response.json()["detail"] == selectors.NO_STARTING_MODEL

    client.force_login(md)
    page = client.get(f"/draw/{image.pk}/").content.decode()
    assert 'id="starting-mask" ' not in page
    assert "No trained model yet: a starting mask appears here after the first round." in page
    assert Mask.objects.filter(image=image).count() == 0


def test_the_newest_finished_round_s_network_makes_the_starting_mask(
    api, client, md, admin_user, make_image, unet_weights
):
    network(admin_user, unet_weights, number=1)
    newest = network(admin_user, unet_weights, number=2, stage="II")
    network(admin_user, unet_weights, number=3, status=Round.Status.TRAINING)  # not finished
    image = make_image()
    client.force_login(md)
    page = client.get(f"/draw/{image.pk}/").content.decode()
    assert 'id="starting-mask" ' in page and "of round 2 (Stage II)" in page

    response = start(api, md, image)

    assert response.status_code == 200, response.content
    body = response.json()
    mask = Mask.objects.get(pk=body["id"])
    assert mask.source == Mask.Source.PREDICTED
    assert mask.model_version == newest and mask.round is None and mask.author is None
    pixels = imaging.read_mask_png(mask.file.read())
    assert pixels.shape == (image.height, image.width)
    assert int(pixels.astype(bool).sum()) == mask.area == body["area"]
    expected = analysis.image_starting_mask(image, newest)
    np.testing.assert_array_equal(pixels.astype(bool), expected.astype(bool))
    assert body["png"].startswith("data:image/png;base64,")
    # A machine mask is no manual mask: the image still waits for a first drawing.
    image.refresh_from_db()
    assert image.status == Image.Status.UNANNOTATED

    # Pressing the button again stores nothing new.
    again = start(api, md, image).json()
    assert again["id"] == mask.pk and Mask.objects.filter(image=image).count() == 1


def test_the_drawing_records_the_starting_mask_as_based_on(
    api, md, admin_user, make_image, unet_weights
):
    network(admin_user, unet_weights, number=1)
    image = make_image()
    start_id = start(api, md, image).json()["id"]
    drawing = np.zeros((image.height, image.width), dtype=bool)
    drawing[10:30, 12:40] = True
    upload = imaging.encode_mask(drawing)

    response = api(md).post(
        f"/api/images/{image.pk}/masks/",
        {"mask": _file(upload), "based_on": start_id},
        format="multipart",
    )

    assert response.status_code == 201, response.content
    saved = Mask.objects.get(pk=response.json()["id"])
    assert saved.source == Mask.Source.DRAWN and saved.based_on_id == start_id
    image.refresh_from_db()
    assert image.status == Image.Status.MANUAL


def test_another_image_s_starting_mask_is_refused_as_based_on(
    api, md, admin_user, make_image, unet_weights
):
    network(admin_user, unet_weights, number=1)
    image, other = make_image(), make_image()
    other_start = start(api, md, other).json()["id"]

    response = api(md).post(
        f"/api/images/{image.pk}/masks/",
        {"mask": _file(imaging.encode_mask(np.zeros((64, 64), bool))), "based_on": other_start},
        format="multipart",
    )

    assert response.status_code == 400
    assert "machine starting mask of its first drawing" in response.json()["detail"]
    assert not Mask.objects.filter(image=image).exists()


def test_never_for_an_image_under_review(
    api, client, md, admin_user, reviewing_round, unet_weights
):
    """Blindness: a machine mask shown beside the candidates an MD reviews would name a
    candidate's source; the draw page is closed there anyway, and the API refuses too."""
    rnd = reviewing_round(images=2)
    network(admin_user, unet_weights, number=50)
    item = rnd.items.first()
    assert item.status == ReviewItem.Status.OPEN
    before = Mask.objects.filter(image=item.image).count()

    response = start(api, md, item.image)

    assert response.status_code == 409
    assert "never while the image is in a round or under review" in response.json()["detail"]
    assert Mask.objects.filter(image=item.image).count() == before
    client.force_login(md)
    assert 'id="starting-mask" ' not in client.get(f"/draw/{item.image.pk}/").content.decode()


def test_a_redraw_starts_from_its_candidates_not_a_machine_mask(
    api, client, md, md2, admin_user, reviewing_round, unet_weights
):
    rnd = reviewing_round(images=2)
    network(admin_user, unet_weights, number=50)
    item = rnd.items.first()
    services.decision_create(item=item, reviewer=md, choice="none", seconds=2)
    item.refresh_from_db()
    image = Image.objects.get(pk=item.image_id)
    assert image.status == Image.Status.REDRAW, item.status

    response = start(api, md2, image)

    assert response.status_code == 409
    client.force_login(md2)
    assert 'id="starting-mask" ' not in client.get(f"/draw/{image.pk}/").content.decode()


def test_only_mds_ask_for_it(api, admin_user, data_user, make_image):
    image = make_image()
    for user in (admin_user, data_user):
        assert start(api, user, image).status_code == 403


def _file(data: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile("mask.png", data, content_type="image/png")
