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


def test_a_candidate_overlay_is_the_mask_coloured_with_an_outline(reviewing_round, md2, api):
    from annotation.imaging import OVERLAY_FILL_ALPHA, OVERLAY_RGB

    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    client = api(md2)
    mask_response = client.get(f"/api/review-items/{item.uuid}/candidates/A.png")
    inside = np.asarray(PILImage.open(io.BytesIO(mask_response.content))) > 127
    assert 0 < inside.sum() < inside.size  # something to colour, and something around it

    response = client.get(f"/api/review-items/{item.uuid}/candidates/A.png?overlay=1")
    assert response.status_code == 200
    overlay = PILImage.open(io.BytesIO(response.content))
    assert overlay.mode == "RGBA" and overlay.size == (64, 64)
    rgba = np.asarray(overlay)
    alpha = rgba[..., 3]
    assert (alpha[~inside] == 0).all()  # nothing drawn outside the mask
    # Inside: a pixel with all four neighbours inside is fill; one next to the outside is edge.
    around = np.pad(inside, 1)
    interior = inside & around[:-2, 1:-1] & around[2:, 1:-1] & around[1:-1, :-2] & around[1:-1, 2:]
    edge = inside & ~interior
    assert interior.any() and edge.any()
    assert (rgba[interior] == (*OVERLAY_RGB, OVERLAY_FILL_ALPHA)).all()
    assert (alpha[edge] == 255).all()
    assert (rgba[edge][:, :3] >= np.array(OVERLAY_RGB)).all()  # lighter than the fill
    again = client.get(f"/api/review-items/{item.uuid}/candidates/A.png?overlay=1")
    assert again.content == response.content


def test_a_downscaled_overlay_is_drawn_from_the_downscaled_mask(make_image, md, api):
    from annotation import services, storage
    from annotation.phantoms import make_phantom

    image = make_image(size=1200)
    truth = make_phantom(7, size=1200).infection
    mask = services.mask_create(image=image, mask=truth, source="drawn", author=md)
    data = storage.display_copy(mask.file.name, 512, form="overlay")
    overlay = np.asarray(PILImage.open(io.BytesIO(data)))
    small_mask = storage.display_copy(mask.file.name, 512, form="mask")
    small = np.asarray(PILImage.open(io.BytesIO(small_mask)))
    assert overlay.shape == (512, 512, 4)
    assert ((overlay[..., 3] > 0) == (small > 127)).all()


def test_a_bad_overlay_parameter_is_a_clear_error(reviewing_round, md2, api):
    item = reviewing_round(images=2).items.first()
    response = api(md2).get(f"/api/review-items/{item.uuid}/candidates/A.png?overlay=yes")
    assert response.status_code == 400
    assert "overlay must be 1" in response.json()["detail"]


def test_the_browser_colours_masks_like_the_server(settings):
    import re
    from pathlib import Path

    from annotation.imaging import OVERLAY_RGB

    css = (Path(settings.BASE_DIR) / "static" / "css" / "app.css").read_text()
    colour = re.search(r"--mask-color:\s*#([0-9a-fA-F]{6})", css).group(1)
    assert tuple(int(colour[k : k + 2], 16) for k in (0, 2, 4)) == OVERLAY_RGB
