"""COCO export: loaded by pycocotools, masks equal to the PNG masks pixel for pixel, every file
in the manifest with its sha256, and two builds of the same data byte for byte the same."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage
from pycocotools.coco import COCO

from annotation import services, storage
from annotation.errors import DomainError
from annotation.exporting import COCO_NAME
from annotation.models import Export

pytestmark = pytest.mark.django_db


def world(reviewing_round, md, make_image):
    rnd = reviewing_round(images=3)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    make_image(covid=False, patient="control")  # an empty ground truth: no instance


def build(data_user, django_capture_on_commit_callbacks, **filters) -> tuple[Export, bytes]:
    with django_capture_on_commit_callbacks(execute=False):
        export = services.export_request(requested_by=data_user, filters=filters)
    export = services.export_build(export=export)
    assert export.status == Export.Status.DONE, export.failure_reason
    with storage.open_file(export.file.name) as fh:
        return export, fh.read()


def test_coco_round_trip_matches_the_png_masks(
    reviewing_round,
    md,
    make_image,
    data_user,
    api,
    tmp_path,
    eager_tasks,
    django_capture_on_commit_callbacks,
):
    world(reviewing_round, md, make_image)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = api(data_user).post(
            "/api/exports/", {"accepted_only": True, "format": "coco"}, format="json"
        )
    assert response.status_code == 202, response.content
    assert response.json()["filters"]["format"] == "coco"
    queued[0]()
    export = Export.objects.get(uuid=response.json()["uuid"])
    assert export.status == Export.Status.DONE, export.failure_reason
    with storage.open_file(export.file.name) as fh, zipfile.ZipFile(io.BytesIO(fh.read())) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}

    manifest = json.loads(files["manifest.json"])
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    (tmp_path / "instances.json").write_bytes(files[COCO_NAME])
    coco = COCO(str(tmp_path / "instances.json"))

    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["COVID-19 infection"]
    assert len(coco.getImgIds()) == manifest["images"] == 4
    checked = 0
    for entry in coco.loadImgs(coco.getImgIds()):
        png = files[entry["file_name"].replace("images/", "masks/").rsplit(".", 1)[0] + ".png"]
        expected = np.asarray(PILImage.open(io.BytesIO(png)).convert("L")) > 127
        decoded = np.zeros((entry["height"], entry["width"]), dtype=bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[entry["id"]])):
            assert ann["iscrowd"] == 0 and ann["area"] == int(expected.sum())
            decoded |= coco.annToMask(ann).astype(bool)
        np.testing.assert_array_equal(decoded, expected)
        checked += int(expected.any())
        assert entry["patient_id"] and entry["image_class"] and entry["mask_source"]
        assert {"round", "reviewer", "model", "stage"} <= set(entry)
    assert checked == 3 and len(coco.getAnnIds()) == 3  # the control has no instance
    control = next(e for e in coco.dataset["images"] if e["patient_id"] == "control")
    assert control["mask_source"] == "control" and not coco.getAnnIds(imgIds=[control["id"]])


def test_two_builds_are_byte_identical_and_png_stays_the_default(
    reviewing_round, md, make_image, data_user, django_capture_on_commit_callbacks
):
    world(reviewing_round, md, make_image)
    first, a = build(data_user, django_capture_on_commit_callbacks, format="coco")
    second, b = build(data_user, django_capture_on_commit_callbacks, format="coco")
    assert first.uuid != second.uuid
    assert a == b and first.sha256 == second.sha256
    _, png = build(data_user, django_capture_on_commit_callbacks)
    names = zipfile.ZipFile(io.BytesIO(png)).namelist()
    assert COCO_NAME not in names and any(n.startswith("masks/") for n in names)
    assert COCO_NAME in zipfile.ZipFile(io.BytesIO(a)).namelist()


def test_unknown_format_is_refused(api, data_user):
    response = api(data_user).post("/api/exports/", {"format": "nifti"}, format="json")
    assert response.status_code == 400 and "format" in response.content.decode()
    with pytest.raises(DomainError, match="unknown format 'nifti'"):
        services.export_filters_clean({"format": "nifti"})


def test_coco_image_entries_carry_the_dicom_uids(
    reviewing_round, md, drawer, data_user, django_capture_on_commit_callbacks
):
    from tests.annotation.test_export_dicom_seg import SOURCE_SOP
    from tests.annotation.test_export_dicom_seg import world as dicom_world

    dicom_world(reviewing_round, md, drawer)
    _, a = build(data_user, django_capture_on_commit_callbacks, format="coco")
    _, b = build(data_user, django_capture_on_commit_callbacks, format="coco")
    assert a == b  # still byte-reproducible
    images = json.loads(zipfile.ZipFile(io.BytesIO(a)).read(COCO_NAME))["images"]
    uids = sorted(
        (e["study_uid"] or "", e["series_uid"] or "", e["sop_instance_uid"] or "") for e in images
    )
    assert uids == [("", "", ""), ("", "", ""), ("1.2.3.4.5", "1.2.3.4.5.6", SOURCE_SOP)]
    assert sum(e["sop_instance_uid"] is None for e in images) == 2  # null, not made up
