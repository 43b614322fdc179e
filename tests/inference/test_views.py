"""The infection-map pages and API: who may open them, what they answer, and what happens
before any final network exists."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from PIL import Image as PILImage

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from annotation.models import Image, Round
from inference import analysis
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db

SIZE = 32
ROLE_FIXTURES = ("md", "admin_user", "data_user")


@pytest.fixture(autouse=True)
def urls(settings):
    # The lead includes inference.urls in config/urls.py; until then this urlconf adds it.
    settings.ROOT_URLCONF = "tests.inference.urlconf"


@pytest.fixture(scope="module")
def unet_weights(tmp_path_factory) -> Iterator[Path]:
    import tensorflow as tf

    from training.nets.builders import build_model

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("weights") / "unet.weights.h5"
    build_model("unet", "densenet121", input_size=SIZE).save_weights(str(path))
    tf.keras.backend.clear_session()
    yield path
    analysis.model_cache_clear()


@pytest.fixture
def final_models(admin_user, unet_weights):
    """A finished final round with one segmentation network (no classifier)."""
    from training.nets.config import TrainConfig

    rnd = Round.objects.create(
        number=77, stage=Round.Stage.FINAL, status=Round.Status.DONE, started_by=admin_user
    )
    name = "models/final-unet.weights.h5"
    target = Path(settings.MEDIA_ROOT) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(unet_weights, target)
    config = TrainConfig(arch="unet", encoder="densenet121", input_size=SIZE).to_dict()
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        config=config,
        status=TrainingRun.Status.SUCCEEDED,
    )
    return [
        ModelVersion.objects.create(
            run=run,
            arch="unet",
            encoder="densenet121",
            config=config,
            weights=name,
            data_version="test",
        )
    ]


def png_upload(h: int = 48, w: int = 40, name: str = "upload.png"):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from annotation.phantoms import make_phantom

    gray = make_phantom(11, size=max(h, w), covid=True).image[:h, :w]
    buf = io.BytesIO()
    PILImage.fromarray(gray).save(buf, format="PNG")
    return SimpleUploadedFile(name, buf.getvalue(), content_type="image/png")


def decode_data_url(url: str) -> PILImage.Image:
    assert url.startswith("data:image/png;base64,")
    return PILImage.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# ---------------------------------------------------------------- pages and roles


def page_urls(image: Image) -> list[str]:
    return ["/maps/", f"/images/{image.pk}/map/", "/demo/"]


@pytest.mark.parametrize("role", ROLE_FIXTURES)
def test_pages_render_for_every_role(request, client, make_image, final_models, role):
    image = make_image()
    client.force_login(request.getfixturevalue(role))

    for url in page_urls(image):
        response = client.get(url)
        assert response.status_code == 200, url
        assert b'id="viewer"' in response.content or url == "/maps/"
        body = response.content.decode()
        # Every page that shows the model's output names it and says it is not validated.
        assert 'data-validated="0"' in body and "Not validated" in body
        assert "unet" in body and "32 px" in body and "fine-tuned" in body


def test_pages_send_anonymous_users_to_sign_in(client, make_image):
    image = make_image()
    for url in page_urls(image):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_pages_refuse_users_without_a_role(client, make_image, nobody):
    image = make_image()
    client.force_login(nobody)
    for url in page_urls(image):
        assert client.get(url).status_code == 403, url


def test_api_refuses_anonymous_and_no_role(api, make_image, nobody):
    image = make_image()
    for client in (api(), api(nobody)):
        assert client.post("/api/infer/", {"file": png_upload()}).status_code in (401, 403)
        assert client.get(f"/api/images/{image.pk}/infection-map/").status_code in (401, 403)


def test_without_final_networks_the_pages_say_so(client, make_image, admin_user, md):
    image = make_image()
    client.force_login(admin_user)

    for url in page_urls(image):
        body = client.get(url).content.decode()
        assert "No infection maps yet" in body
        assert 'href="/rounds/"' in body  # admins are sent to start a final round
        assert 'id="viewer"' not in body

        assert "No final model yet" in body and "0 of 1 images have one" in body

    client.force_login(md)
    body = client.get(f"/images/{image.pk}/map/").content.decode()
    assert "Ask an admin" in body and 'href="/rounds/"' not in body


def test_without_final_networks_the_pages_name_the_round_to_wait_for(
    client, make_image, admin_user
):
    make_image()
    client.force_login(admin_user)
    stage_one = Round.objects.create(number=3, stage=Round.Stage.STAGE_I, started_by=admin_user)
    stage_one.status = Round.Status.REVIEWING
    stage_one.save()
    body = client.get("/demo/").content.decode()
    assert "Round 3 (Stage I) is in review" in body and 'href="/rounds/3/"' in body
    assert 'id="demo-form"' not in body

    stage_one.status = Round.Status.DONE
    stage_one.save()
    Round.objects.create(number=4, stage=Round.Stage.FINAL, started_by=admin_user)
    body = client.get("/maps/").content.decode()
    assert "Final round 4 is training" in body and 'href="/rounds/4/"' in body
    assert "No map yet" in body


def test_map_list_filters_by_class_and_paginates(client, make_image, md, monkeypatch):
    from inference import views

    monkeypatch.setattr(views, "PAGE_SIZE", 2)
    covid = [make_image(covid=True) for _ in range(3)]
    control = make_image(covid=False)
    client.force_login(md)

    first = client.get("/maps/?class=covid19").content.decode()
    second = client.get("/maps/?class=covid19&page=2").content.decode()
    controls = client.get("/maps/?class=normal").content.decode()

    assert covid[0].name in first and covid[1].name in first and covid[2].name not in first
    assert covid[2].name in second and "Page 2 of 2" in second
    assert control.name in controls and covid[0].name not in controls
    assert f'href="/images/{control.pk}/map/"' in controls


# ---------------------------------------------------------------- the API


@pytest.mark.parametrize("role", ROLE_FIXTURES)
def test_infer_returns_the_analysis_of_an_uploaded_png(request, api, final_models, role):
    client = api(request.getfixturevalue(role))

    response = client.post("/api/infer/", {"file": png_upload(48, 40)}, format="multipart")

    assert response.status_code == 200, response.content
    body = response.json()
    assert {"detected", "max_probability", "severity", "map", "gradcam", "cxr", "models"} <= set(
        body
    )
    assert isinstance(body["detected"], bool)
    assert 0.0 <= body["max_probability"] <= 1.0
    assert body["detected"] == (body["max_probability"] >= 0.5)
    assert 0.0 <= body["severity"]["infected_fraction"] <= 1.0
    assert body["severity"]["grade"] is None  # an upload has no lung mask
    for key in ("map", "cxr"):
        image = decode_data_url(body[key])
        assert image.size == (40, 48)
    assert decode_data_url(body["map"]).mode == "RGB"
    assert body["gradcam"] is None  # no classifier in this final round
    assert [m["id"] for m in body["models"]] == [mv.pk for mv in final_models]
    assert body["models"][0]["round"] == 77
    # A 32-px network never measured on held-out images: its output is not a finding.
    assert body["validation"]["validated"] is False
    reasons = " ".join(body["validation"]["reasons"])
    assert "not been measured on held-out images" in reasons and "32 px" in reasons
    assert body["models"][0]["card"]["input_size"] == 32


def test_infer_stores_nothing(api, md, final_models):
    media = Path(settings.MEDIA_ROOT)
    before = sorted(p for p in media.rglob("*") if p.is_file())
    images = Image.objects.count()

    response = api(md).post("/api/infer/", {"file": png_upload()}, format="multipart")

    assert response.status_code == 200
    assert sorted(p for p in media.rglob("*") if p.is_file()) == before
    assert Image.objects.count() == images


def test_infer_without_final_networks_is_a_clear_409(api, md):
    response = api(md).post("/api/infer/", {"file": png_upload()}, format="multipart")

    assert response.status_code == 409
    assert "No infection-map networks have been trained yet" in response.json()["detail"]


def test_infer_refuses_what_is_not_a_cxr(api, md, final_models):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client = api(md)
    bad = SimpleUploadedFile("notes.txt", b"not an image at all", content_type="text/plain")

    response = client.post("/api/infer/", {"file": bad}, format="multipart")
    missing = client.post("/api/infer/", {}, format="multipart")

    assert response.status_code == 400
    assert response.json()["detail"] == "notes.txt is not a PNG, JPEG or DICOM image"
    assert missing.status_code == 400 and "file" in missing.json()


def test_image_map_api_uses_the_stored_image(api, data_user, make_image, final_models):
    image = make_image(size=56)

    response = api(data_user).get(f"/api/images/{image.pk}/infection-map/")

    assert response.status_code == 200
    body = response.json()
    assert (body["width"], body["height"]) == (image.width, image.height)
    assert decode_data_url(body["map"]).size == (image.width, image.height)
    assert body["detected"] == (body["max_probability"] >= 0.5)


def test_image_map_api_offers_a_lung_only_map_with_a_lung_mask(
    api, client, data_user, final_models
):
    from annotation import imaging, services
    from annotation.models import ImageClass
    from annotation.phantoms import make_phantom

    phantom = make_phantom(5, size=48)
    image = services.image_create(
        data=imaging.encode_png(phantom.image),
        name="with-lungs.png",
        source="tests",
        image_class=ImageClass.COVID,
        patient_id="L1",
        lung_mask_data=imaging.encode_mask(phantom.lungs),
    )

    body = api(data_user).get(f"/api/images/{image.pk}/infection-map/").json()

    lungs_only = np.asarray(decode_data_url(body["map_lungs"]).convert("RGB")).astype(int)
    cxr = np.asarray(decode_data_url(body["cxr"]).convert("L")).astype(int)
    outside = ~phantom.lungs
    # Outside the lungs the X-ray shows unchanged (gray); inside, the map may colour it.
    for channel in range(3):
        assert np.array_equal(lungs_only[..., channel][outside], cxr[outside])
    assert body["epsilon"] == 0.02 and body["threshold"] == 0.5
    client.force_login(data_user)
    page = client.get(f"/images/{image.pk}/map/").content.decode()
    assert "Lungs only" in page and "Pixels below 0.02 are left uncoloured" in page


def test_image_map_api_without_final_networks(api, md, make_image):
    image = make_image()

    response = api(md).get(f"/api/images/{image.pk}/infection-map/")

    assert response.status_code == 409
    assert "final round" in response.json()["detail"]


def test_newest_final_round_only_and_only_when_done(admin_user, final_models):
    """A final round still training does not replace the finished one's networks."""
    Round.objects.create(
        number=78, stage=Round.Stage.FINAL, status=Round.Status.TRAINING, started_by=admin_user
    )

    models, classifier = analysis.final_ensemble()

    assert models == final_models and classifier is None


def test_max_shrinks_the_returned_pictures_but_not_the_measurements(api, md, final_models):
    client = api(md)

    full = client.post("/api/infer/", {"file": png_upload(600, 520)}, format="multipart").json()
    small = client.post(
        "/api/infer/?max=512", {"file": png_upload(600, 520)}, format="multipart"
    ).json()
    bad = client.post("/api/infer/?max=77", {"file": png_upload()}, format="multipart")

    assert decode_data_url(full["map"]).size == (520, 600)
    assert decode_data_url(small["map"]).size == (444, 512)
    assert decode_data_url(small["cxr"]).size == (444, 512)
    assert (small["width"], small["height"]) == (520, 600)
    assert small["severity"] == full["severity"]
    assert small["max_probability"] == full["max_probability"]
    assert bad.status_code == 400 and "max must be one of" in bad.json()["detail"]
