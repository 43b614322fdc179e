"""The export page's format choice: COCO chosen in the form reaches the queued export."""

from __future__ import annotations

from annotation.models import Export
from tests.browser.helpers import BROWSER

pytestmark = BROWSER


def test_the_export_page_queues_a_coco_export(page, sign_in, url, shot, data_user):
    sign_in(page, data_user)
    page.goto(url("/exports/"))
    options = page.locator("select[name=format] option").all_inner_texts()
    assert options == ["PNG masks", "COCO instance segmentation (RLE)", "DICOM-SEG per image"]
    assert page.input_value("select[name=format]") == "png"
    page.select_option("select[name=format]", "dicom-seg")
    shot(page, "dicom-seg-chosen")
    page.select_option("select[name=format]", "coco")
    shot(page, "coco-chosen")
    with page.expect_navigation(url="**/exports/"):
        page.click("form button:has-text('Build export')")
    assert Export.objects.get().filters["format"] == "coco"  # the worker builds it as COCO
