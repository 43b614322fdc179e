"""The screening page: a near-duplicate shown beside the image it resembles; Keep makes it
eligible for rounds."""

from __future__ import annotations

import numpy as np

from annotation import imaging, services
from annotation.models import Image, ImageClass, Screening
from annotation.phantoms import make_phantom
from tests.browser.helpers import BROWSER

pytestmark = BROWSER


def test_a_near_duplicate_pair_is_shown_and_keep_makes_it_eligible(
    page, sign_in, url, shot, admin_user, settings
):
    settings.MASKLOOP_SCREEN_MIN_SIDE = 224
    settings.MASKLOOP_NEAR_DUPLICATE_DISTANCE = 12
    gray = make_phantom(11, size=256).image
    copy = np.clip(gray + np.random.default_rng(0).normal(8, 5, gray.shape), 0, 255)
    images = [
        services.image_create(
            data=imaging.encode_png(g.astype(np.uint8)),
            name=name,
            source="tests",
            image_class=ImageClass.COVID,
        )
        for g, name in ((gray, "first.png"), (copy, "second.png"))
    ]
    first, second = images
    assert second.screening == Screening.PENDING

    sign_in(page, admin_user)
    page.click("nav >> text=Screening")
    card = page.locator(f".screening-item[data-image='{second.pk}']")
    assert "near-duplicate" in card.inner_text()
    imgs = card.locator(".screen-pair img")
    assert imgs.count() == 2  # the pair, side by side
    srcs = [imgs.nth(i).get_attribute("src") for i in range(2)]
    assert srcs[0].startswith(f"/api/images/{second.pk}/display.png")
    assert srcs[1].startswith(f"/api/images/{first.pk}/display.png")
    page.wait_for_function(
        "els => els.every(i => i.complete && i.naturalWidth > 0)",
        arg=imgs.element_handles(),
    )
    shot(page, "pair")

    card.locator("input[name=reason]").fill("another projection of the same study")
    with page.expect_navigation():
        card.locator("button:has-text('Keep')").click()
    shot(page, "kept")
    assert "second.png: kept by an admin." in page.locator(".messages").inner_text()
    assert page.locator(f".screening-item[data-image='{second.pk}']").count() == 0
    second.refresh_from_db()
    assert second.screening == Screening.KEPT
    assert Image.objects.filter(screening__in=Screening.eligible(), pk=second.pk).exists()
    decision = second.screening_decisions.get()
    assert (decision.decided_by, decision.reason) == (
        admin_user,
        "another projection of the same study",
    )
