"""Exports are queued by the request and counted and built by the worker, from a stream."""

import io
import json
import zipfile

import pytest

from annotation import services, storage
from annotation.models import Export, GroundTruth
from annotation.selectors import current_ground_truths, export_count, export_rows

pytestmark = pytest.mark.django_db


def decided(reviewing_round, md, images=3):
    rnd = reviewing_round(images=images)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    return rnd


def test_post_answers_202_at_once_and_the_worker_counts_and_builds(
    reviewing_round, md, data_user, api, eager_tasks, django_capture_on_commit_callbacks
):
    decided(reviewing_round, md)
    client = api(data_user)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post("/api/exports/", {"accepted_only": True}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == Export.Status.QUEUED and body["image_count"] == 0
    assert body["download_url"] is None
    export = Export.objects.get(uuid=body["uuid"])
    assert export.attempts == 1 and export.heartbeat_at is not None
    assert len(queued) == 1  # the build is sent once the request's transaction commits
    queued[0]()  # the worker (eager here) builds it
    export.refresh_from_db()
    assert export.status == Export.Status.DONE, export.failure_reason
    assert export.image_count == 3 and export.progress == 1.0
    assert export.heartbeat_at >= export.created_at
    detail = client.get(f"/api/exports/{export.uuid}/").json()
    assert detail["download_url"]
    with storage.open_file(export.file.name) as fh, zipfile.ZipFile(io.BytesIO(fh.read())) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["images"] == 3
    assert len([n for n in manifest["files"] if n.startswith("masks/")]) == 3


def test_the_export_page_shows_a_queued_export(
    reviewing_round, md, data_user, api, django_capture_on_commit_callbacks
):
    decided(reviewing_round, md, images=2)
    page = api(data_user).post("/exports/", {"accepted_only": "on"})
    assert page.status_code == 302
    listing = api(data_user).get("/exports/").content.decode()
    assert "Queued" in listing


def test_current_ground_truth_is_the_newest_one_per_image(reviewing_round, md):
    rnd = decided(reviewing_round, md, images=2)
    item = rnd.items.first()
    older = GroundTruth.objects.get(item=item)
    other = item.candidates.exclude(mask=older.mask).first().mask
    newer = GroundTruth.objects.create(image=item.image, mask=other, item=item)
    current = current_ground_truths()
    assert current.filter(image=item.image).get() == newer
    assert current.count() == 2
    row = next(r for r in export_rows({}) if r.image_id == item.image_id)
    assert row.mask_path == other.file.name


def test_rows_stream_in_chunks_the_same_as_all_at_once(reviewing_round, md, make_image):
    decided(reviewing_round, md, images=4)
    make_image(covid=False, patient="shared")
    make_image(covid=False, patient="shared")
    make_image()  # no ground truth
    whole = list(export_rows({"accepted_only": False}))
    assert [r.image_id for r in whole] == sorted(r.image_id for r in whole)
    assert list(export_rows({"accepted_only": False}, chunk_size=2)) == whole
    assert len(whole) == export_count({"accepted_only": False}) == 7
    assert export_count({"accepted_only": True}) == 6
    # Folds: an image's patient decides its fold, and folds are spread over the images.
    shared = {r.fold for r in whole if r.patient_id == "shared"}
    assert len(shared) == 1
    assert len({r.fold for r in whole}) >= 3
    assert all(0 <= r.fold < 5 for r in whole)


def test_the_manifest_is_written_as_json_dumps_would(reviewing_round, md):
    decided(reviewing_round, md, images=2)
    from annotation.exporting import write_zip

    out = io.BytesIO()
    assert write_zip(export_rows({}), out, opener=storage.open_file) == 2
    with zipfile.ZipFile(out) as zf:
        raw = zf.read("manifest.json")
    body = json.loads(raw)
    assert raw == json.dumps(body, indent=2, sort_keys=True).encode()
