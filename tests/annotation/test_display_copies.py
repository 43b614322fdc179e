"""Downscaled display copies: small, cached, and still binary for masks."""

import io

import numpy as np
import pytest
from PIL import Image as PILImage

pytestmark = pytest.mark.django_db


def test_review_images_come_downscaled_on_request_and_masks_stay_binary(
    reviewing_round, make_image, md2, api
):
    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    client = api(md2)
    full = PILImage.open(io.BytesIO(client.get(f"/api/review-items/{item.uuid}/image.png").content))
    assert full.size == (64, 64)

    big = make_image(size=1200)
    response = api(md2).get(f"/api/images/{big.pk}/display.png?max=512")
    assert response.status_code == 200
    small = PILImage.open(io.BytesIO(response.content))
    assert max(small.size) == 512
    again = api(md2).get(f"/api/images/{big.pk}/display.png?max=512")
    assert again.content == response.content

    mask = client.get(f"/api/review-items/{item.uuid}/candidates/A.png?max=512")
    assert mask.status_code == 200
    assert set(np.unique(np.asarray(PILImage.open(io.BytesIO(mask.content))))) <= {0, 255}


def test_an_unsupported_size_is_a_clear_error(make_image, md, api):
    image = make_image()
    response = api(md).get(f"/api/images/{image.pk}/display.png?max=999")
    assert response.status_code == 400
    assert "max must be one of 512, 1024, 1536, 2048" in response.json()["detail"]
