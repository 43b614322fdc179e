"""Pages whose work happens in real Celery worker processes: the data team's export download,
and an admin starting a Stage I round and watching it train to review. The workers start once
for this module (see `celery_workers` in conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile

import numpy as np
from PIL import Image as PILImage

from annotation.models import Export, GroundTruth, ReviewItem, Round
from tests.browser.helpers import BROWSER

pytestmark = BROWSER

ROUND_TIMEOUT = 15 * 60


def test_the_export_page_downloads_a_valid_zip(
    worker, page, sign_in, url, shot, md, data_user, make_image
):
    # Accepted masks without a round: a round here would enqueue real training tasks.
    for _ in range(3):
        image = make_image(size=96, manual_by=md)
        GroundTruth.objects.create(image=image, mask=image.masks.get(), accepted_by=md)

    sign_in(page, data_user)
    assert page.url == url("/exports/")
    shot(page, "exports")
    assert page.is_checked("input[name=accepted_only]")
    with page.expect_navigation(url="**/exports/"):
        page.click("form button:has-text('Build export')")
    shot(page, "queued")
    export = Export.objects.get()  # queued by the request; the worker counts and builds it
    # exports.js polls and reloads the page once the worker has built the zip.
    link = page.locator("a.button", has_text="Download")
    link.wait_for(timeout=120_000)
    shot(page, "ready")
    with page.expect_download() as info:
        link.click()
    download = info.value
    data = download.path().read_bytes()
    export.refresh_from_db()
    assert export.status == Export.Status.DONE and export.image_count == 3
    assert download.suggested_filename.startswith("maskloop-export-")
    assert download.suggested_filename.endswith(".zip")
    assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.size

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["images"] == 3
        listed = set(manifest["files"])
        assert listed == set(zf.namelist()) - {"manifest.json"}
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest, name
        images = sorted(n for n in listed if n.startswith("images/"))
        masks = sorted(n for n in listed if n.startswith("masks/"))
        assert len(images) == len(masks) == 3
        for image_name, mask_name in zip(images, masks, strict=True):
            img = PILImage.open(io.BytesIO(zf.read(image_name)))
            mask = np.asarray(PILImage.open(io.BytesIO(zf.read(mask_name))))
            assert mask.shape == (img.height, img.width)
            assert set(np.unique(mask).tolist()) <= {0, 255}
        assert len(zf.read("metadata.csv").decode().splitlines()) == 4


def progress_values(page) -> list[int]:
    return [
        int(v)
        for v in page.locator("#runs [role=progressbar]").evaluate_all(
            "bars => bars.map(b => b.getAttribute('aria-valuenow'))"
        )
    ]


def test_an_admin_starts_a_round_and_watches_it_reach_review(
    worker, page, sign_in, url, shot, md, admin_user, make_image
):
    for _ in range(4):
        make_image(size=48, manual_by=md)
    sign_in(page, admin_user)
    assert page.url == url("/rounds/")
    shot(page, "rounds")
    page.select_option("select[name=stage]", "I")
    page.check("input[name=network_set][value=custom]")  # opens the advanced list
    page.check("input[name=networks][value='unet/densenet121']")
    page.fill("input[name=folds]", "2")
    page.select_option("select[name=preset]", "tiny")
    page.fill("input[name=epochs]", "3")  # not the preset's 30: the page, not the learning
    page.fill("input[name=reviewers_per_item]", "1")
    with page.expect_navigation(url="**/rounds/1/"):
        page.click("form button:has-text('Start round')")
    rnd = Round.objects.get()
    assert rnd.config["networks"] == [["unet", "densenet121"]] and rnd.config["folds"] == 2
    assert rnd.config["overrides"]["epochs"] == 3
    page.locator("#runs tbody tr").first.wait_for()
    assert page.locator("#runs tbody tr").count() == 2  # one network × two folds
    shot(page, "started")

    deadline = time.monotonic() + ROUND_TIMEOUT
    midway = False
    while True:
        status = page.inner_text("#round-status")
        bars = progress_values(page)
        if status == "In review" and bars and all(v == 100 for v in bars):
            break
        assert status in ("Queued", "Training", "Predicting", "In review"), (
            f"round {status}: {page.inner_text('#round-failure')}"
        )
        if not midway and any(0 < v < 100 for v in bars):
            midway = True
            shot(page, "midway")
        assert worker.alive(), "a Celery worker died; see artifacts/browser-worker-*.log"
        assert time.monotonic() < deadline, (
            f"round still {status} with progress {bars} after {ROUND_TIMEOUT}s"
        )
        page.wait_for_timeout(2000)
    if not midway:
        shot(page, "midway")  # too quick to catch between two polls
    shot(page, "in-review")

    rnd.refresh_from_db()
    assert rnd.status == Round.Status.REVIEWING
    assert rnd.training_runs.filter(status="succeeded").count() == 2
    assert rnd.items.filter(status=ReviewItem.Status.OPEN).count() == 4
    assert all(item.candidates.count() == 2 for item in rnd.items.all())
    statuses = page.locator("#runs tbody tr td:nth-child(3)").all_inner_texts()
    assert len(statuses) == 2 and len(set(statuses)) == 1
    assert page.locator("#stats").inner_text().startswith("Items")
