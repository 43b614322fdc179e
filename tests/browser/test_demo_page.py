"""The demo page, as the study's live demo: upload a CXR, see its infection map; and what the
pages say about a model that is not validated, or before there is any."""

import base64
import io
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from annotation import imaging, services
from annotation.models import ImageClass, Round
from annotation.phantoms import make_phantom
from tests.browser.helpers import BROWSER
from training.models import ModelVersion, TrainingRun

pytestmark = BROWSER
SIZE = 32


# The final round: a tiny 32-px network measured on 3 held-out images, 2 COVID-19 (both
# found) and 1 control (called COVID-19): eq. 13 reads "precision 66.67 +- 53.34".
TINY_METRICS = {
    "test_images": 3,
    "image": {"confusion": {"tp": 2, "fp": 1, "tn": 0, "fn": 0}, "auc": 0.5},
    "pixel": {"confusion": {"tp": 30, "fp": 60, "tn": 2900, "fn": 82}, "auc": 0.6},
}


def final_network(admin_user, tmp_path, metrics: dict | None = None) -> ModelVersion:
    """A finished final round (tiny preset) with one small, untrained U-Net trained on 9 masks:
    the page, not the network's skill, is under test here."""
    import tensorflow as tf

    from training.nets.builders import build_model
    from training.nets.config import TrainConfig

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    weights = tmp_path / "unet.weights.h5"
    build_model("unet", "densenet121", input_size=SIZE).save_weights(str(weights))
    name = "models/demo-unet.weights.h5"
    (Path(settings.MEDIA_ROOT) / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, Path(settings.MEDIA_ROOT) / name)
    rnd = Round.objects.create(
        number=90,
        stage=Round.Stage.FINAL,
        status=Round.Status.DONE,
        started_by=admin_user,
        config={"preset": "tiny"},
    )
    config = TrainConfig(arch="unet", encoder="densenet121", input_size=SIZE).to_dict()
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        config=config,
        train_image_ids=[[i, i] for i in range(1, 10)],
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        run=run,
        arch="unet",
        encoder="densenet121",
        config=config,
        weights=name,
        data_version="test",
        metrics=metrics or {},
    )


def test_the_demo_page_shows_an_infection_map_for_an_uploaded_cxr(
    page, url, sign_in, shot, md, admin_user, tmp_path
):
    final_network(admin_user, tmp_path)
    upload = tmp_path / "cxr.png"
    upload.write_bytes(imaging.encode_png(make_phantom(7, size=96).image))
    sign_in(page, md)
    page.goto(url("/demo/"))
    shot(page, "empty")
    banner = page.inner_text("#model-validation")
    assert "Not validated" in banner and "not a diagnosis" in banner
    assert "32 px" in banner and "tiny preset" in banner  # the reasons, in words
    card = page.inner_text("#model-card")
    assert "9 training masks" in card and "fine-tuned" in card
    page.set_input_files("#demo-file", str(upload))
    page.click("#demo-submit")
    page.wait_for_selector("#viewer-results:not([hidden])", timeout=180_000)
    page.wait_for_selector("#viewer-status.success")
    page.locator("#viewer-results").scroll_into_view_if_needed()
    shot(page, "result")

    source = page.get_attribute("#map-image", "src")
    assert source.startswith("data:image/png;base64,")
    rendered = PILImage.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    assert rendered.size == (96, 96)
    assert np.asarray(rendered.convert("RGB")).shape == (96, 96, 3)
    # No red verdict from a network that is not validated: a neutral statement instead.
    detection = page.inner_text("#detection")
    assert "Not validated" in detection and "not a diagnosis" in detection
    assert "COVID-19 detected" not in detection
    assert page.locator("#detection .badge.danger").count() == 0
    assert page.inner_text("#findings").strip()
    assert "Pixels below 0.02 are left uncoloured" in page.inner_text("#map-explain")


def test_before_a_final_round_the_pages_say_why_and_after_one_name_the_tiny_model(
    page, url, sign_in, shot, admin_user, make_image, tmp_path
):
    make_image()
    sign_in(page, admin_user)
    page.goto(url("/demo/"))
    shot(page, "no-model")
    assert page.locator("#demo-form").count() == 0
    note = page.inner_text("#no-models")
    assert "No final model yet" in note and "0 of 1 images have one" in note
    page.goto(url("/maps/"))
    shot(page, "maps-no-model")
    assert "No map yet" in page.inner_text("table")
    with page.expect_navigation():
        page.click("#no-models >> text=Start a final round on the Rounds page")
    assert page.url == url("/rounds/")

    final_network(admin_user, tmp_path, TINY_METRICS)
    page.goto(url("/rounds/90/"))
    page.wait_for_selector("#evaluation:not([hidden])")
    page.locator("#evaluation").scroll_into_view_if_needed()
    shot(page, "dashboard")
    assert "Not validated" in page.inner_text("#evaluation-validation")
    assert "3 (2 COVID-19, 1 control)" in page.inner_text("#evaluation-networks")
    # Precision 2 of 3: Wilson's 95 % interval, not eq. 13's 66.67 +- 53.34 past 100 %.
    image_level = page.inner_text("#metrics-image")
    assert "66.7 (20.8–93.9)" in image_level and "100.0 (34.2–100.0)" in image_level
    page.select_option("#interval-kind", "paper")
    assert "66.7 (13.3–100.0)" in page.inner_text("#metrics-image")  # eq. 13, clipped

    page.goto(url("/maps/"))
    shot(page, "maps")
    assert "Not validated" in page.inner_text("#model-validation")
    assert "100.0 (34.2–100.0)" in page.inner_text("#model-card")

    # An image with a lung mask: the map can be limited to the lungs.
    phantom = make_phantom(3, size=96)
    image = services.image_create(
        data=imaging.encode_png(phantom.image),
        name="with-lungs.png",
        source="tests",
        image_class=ImageClass.COVID,
        patient_id="L1",
        lung_mask_data=imaging.encode_mask(phantom.lungs),
    )
    page.goto(url(f"/images/{image.pk}/map/"))
    page.wait_for_selector("#viewer-results:not([hidden])", timeout=180_000)
    whole = page.get_attribute("#map-image", "src")
    page.check("#lungs-only")
    assert page.get_attribute("#map-image", "src") not in (whole, None)
    page.locator("#viewer-results").scroll_into_view_if_needed()
    shot(page, "lungs-only")
    assert "Not validated" in page.inner_text("#detection")
    assert "grade" not in page.inner_text("#findings")  # no severity grade from it either
