"""The demo page, as the study's live demo: upload a CXR, see its infection map."""

import base64
import io
import shutil
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from annotation import imaging
from annotation.models import Round
from annotation.phantoms import make_phantom
from tests.browser.helpers import BROWSER
from training.models import ModelVersion, TrainingRun

pytestmark = BROWSER
SIZE = 32


def final_network(admin_user, tmp_path) -> ModelVersion:
    """A finished final round with one small, untrained U-Net: the page, not the network's
    skill, is under test here."""
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
        number=90, stage=Round.Stage.FINAL, status=Round.Status.DONE, started_by=admin_user
    )
    config = TrainConfig(arch="unet", encoder="densenet121", input_size=SIZE).to_dict()
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        config=config,
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        run=run,
        arch="unet",
        encoder="densenet121",
        config=config,
        weights=name,
        data_version="test",
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
    page.set_input_files("#demo-file", str(upload))
    page.click("#demo-submit")
    page.wait_for_selector("#viewer-results:not([hidden])", timeout=180_000)
    shot(page, "result")

    source = page.get_attribute("#map-image", "src")
    assert source.startswith("data:image/png;base64,")
    rendered = PILImage.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
    assert rendered.size == (96, 96)
    assert np.asarray(rendered.convert("RGB")).shape == (96, 96, 3)
    assert "COVID-19" in page.inner_text("#detection")
    assert page.inner_text("#findings").strip()
