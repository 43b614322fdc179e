"""The whole collaborative loop on PostgreSQL, Redis and a real Celery worker process.

Stage I (cross-validated networks vs the MDs' masks) → blind picks → Stage II on every image
without a mask → blind picks with one "none" → redraw → every image has ground truth →
export, checked file by file, and a second export that must be byte-identical.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.request
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation import imaging
from annotation.demo import demo_dataset_write, demo_md_masks
from annotation.ingest import ingest_folder
from annotation.models import Export, GroundTruth, Image, Round
from tests.conftest import make_user
from tests.workers import ARTIFACTS, celery_workers

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROUND_TIMEOUT = 20 * 60
# Each round's networks train this many epochs, not the tiny preset's 30: the loop's plumbing
# (workers, predictions, review, redraw, export) is what this test checks, never how well the
# networks learned, and each epoch of the 6 trainings costs the suite about a second.
EPOCHS = 3


@pytest.fixture
def worker(media_root):
    with celery_workers("e2e", media_root) as workers:
        yield workers


def wait_for(rnd: Round, status: str, worker) -> Round:
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        rnd.refresh_from_db()
        if rnd.status == status:
            return rnd
        assert rnd.status != Round.Status.FAILED, rnd.failure_reason
        assert worker.alive(), f"a Celery worker died; see {worker.logs}"
        time.sleep(1)
    runs = list(rnd.training_runs.values_list("status", "failure_reason"))
    raise AssertionError(f"round {rnd.number} still {rnd.status} after {ROUND_TIMEOUT}s: {runs}")


def review_everything(client, *, none_first: bool = False) -> list[str]:
    picked: list[str] = []
    while True:
        response = client.get("/api/review-items/next/")
        if response.status_code == 204:
            return picked
        item = response.json()
        choice = "none" if none_first and not picked else item["candidates"][0]["label"]
        done = client.post(item["decision_url"], {"choice": choice, "seconds": 2.5}, format="json")
        assert done.status_code == 201, done.content
        picked.append(choice)


def build_export(client) -> tuple[bytes, dict]:
    response = client.post("/api/exports/", {"accepted_only": True}, format="json")
    assert response.status_code == 202, response.content
    uuid = response.json()["uuid"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"/api/exports/{uuid}/").json()
        if body["status"] in (Export.Status.DONE, Export.Status.FAILED):
            break
        time.sleep(0.5)
    assert body["status"] == Export.Status.DONE, body
    download = client.get(body["download_url"])
    if download.status_code == 302:  # object storage: the browser fetches a presigned URL
        with urllib.request.urlopen(download["Location"], timeout=60) as fetched:
            assert fetched.headers["Content-Disposition"].startswith("attachment; filename=")
            data = fetched.read()
    else:
        assert download.status_code == 200, download
        data = b"".join(download.streaming_content)
    assert hashlib.sha256(data).hexdigest() == body["sha256"]
    return data, body


def check_manifest(data: bytes, images: int) -> zipfile.ZipFile:
    """The export holds `images` images and masks, and every file matches its manifest entry."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    assert len([n for n in names if n.startswith("images/")]) == images
    assert len([n for n in names if n.startswith("masks/")]) == images
    manifest = json.loads(zf.read("manifest.json"))
    assert manifest["images"] == images
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(zf.read(name)).hexdigest() == digest, name
    return zf


def test_two_stage_loop_to_export(worker, api, tmp_path):
    md, admin, data_team = (
        make_user("md1", "md"),
        make_user("boss", "admin"),
        make_user("analyst", "data"),
    )
    cases = demo_dataset_write(tmp_path / "cxr", n_covid=24, n_control=6, size=64)
    report = ingest_folder(tmp_path / "cxr", source="phantoms")
    assert len(report.imported) == 30 and not report.rejected
    # Another MD draws the first masks: nobody reviews an item holding a mask they drew.
    drawer = make_user("md0", "md")
    assert demo_md_masks(cases=cases, author=drawer, count=8, size=64) == 8

    md_client, admin_client = api(md), api(admin)
    started = time.monotonic()
    response = admin_client.post(
        "/api/rounds/",
        {
            "stage": "I",
            "folds": 2,
            "preset": "tiny",
            "epochs": EPOCHS,
            "networks": [["unet", "densenet121"], ["unetpp", "densenet121"]],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    stage1 = wait_for(Round.objects.get(number=response.json()["number"]), "reviewing", worker)
    assert stage1.training_runs.filter(status="succeeded").count() == 4
    assert all(item.candidates.count() == 3 for item in stage1.items.all())
    assert len(review_everything(md_client)) == 8
    assert wait_for(stage1, "done", worker)

    response = admin_client.post(
        "/api/rounds/",
        {
            "stage": "II",
            "preset": "tiny",
            "epochs": EPOCHS,
            "networks": [["unet", "densenet121"], ["dla", "densenet121"]],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    stage2 = wait_for(Round.objects.get(number=response.json()["number"]), "reviewing", worker)
    assert stage2.items.count() == 16
    picks = review_everything(md_client, none_first=True)
    assert picks.count("none") == 1 and len(picks) == 16

    redraw = Image.objects.get(status=Image.Status.REDRAW)
    queue = md_client.get("/queue/")
    assert redraw.name in queue.content.decode()
    drawn = np.zeros((redraw.height, redraw.width), dtype=bool)
    drawn[20:40, 12:30] = True
    upload = io.BytesIO(imaging.encode_mask(drawn))
    upload.name = "mask.png"
    response = md_client.post(
        f"/api/images/{redraw.pk}/masks/", {"mask": upload}, format="multipart"
    )
    assert response.status_code == 201, response.content
    loop_seconds = time.monotonic() - started

    assert Image.objects.exclude(status=Image.Status.ACCEPTED).count() == 0
    assert GroundTruth.objects.values("image").distinct().count() == 30

    first, meta = build_export(api(data_team))
    second, _ = build_export(api(data_team))
    assert first == second, "a second export of the same data must be byte-identical"

    with check_manifest(first, 30) as zf:
        names = zf.namelist()
        images = [n for n in names if n.startswith("images/")]
        masks = [n for n in names if n.startswith("masks/")]
        for image_name, mask_name in zip(sorted(images), sorted(masks), strict=True):
            img = PILImage.open(io.BytesIO(zf.read(image_name)))
            mask = np.asarray(PILImage.open(io.BytesIO(zf.read(mask_name))))
            assert mask.shape == (img.height, img.width)
            assert set(np.unique(mask)) <= {0, 255}
        rows = zf.read("metadata.csv").decode().splitlines()
        assert len(rows) == 31
        assert any(",redraw" not in r and ",drawn," in r for r in rows)  # the redrawn mask
        assert sum(",predicted," in r for r in rows) >= 8
        folds = zf.read("folds.csv").decode().splitlines()
        assert len(folds) == 31
    (ARTIFACTS / "e2e-timing.txt").write_text(
        f"loop (Stage I → Stage II → redraw): {loop_seconds:.0f} s\n"
    )
    print(f"\nend-to-end loop took {loop_seconds:.0f} s; export {meta['size']} bytes")
