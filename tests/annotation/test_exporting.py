"""The export zip: its layout, its checksums, and the same bytes every time."""

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation import services, storage
from annotation.errors import DomainError
from annotation.exporting import write_zip
from annotation.selectors import export_count, export_rows

pytestmark = pytest.mark.django_db


def build(rows) -> bytes:
    out = io.BytesIO()
    write_zip(rows, out, opener=storage.open_file)
    return out.getvalue()


def test_export_has_images_masks_metadata_folds_and_a_valid_manifest(
    reviewing_round, md, make_image
):
    rnd = reviewing_round(images=3)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="B", seconds=1)
    make_image(covid=False)  # a control: empty mask by definition
    rows = list(export_rows({"accepted_only": True}))
    assert len(rows) == 4
    data = build(rows)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names[-1] == "manifest.json"
        manifest = json.loads(zf.read("manifest.json"))
        assert set(manifest["files"]) == set(names) - {"manifest.json"}
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        masks = [n for n in names if n.startswith("masks/")]
        assert len(masks) == 4
        for name in masks:
            mask = np.asarray(PILImage.open(io.BytesIO(zf.read(name))))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        meta = zf.read("metadata.csv").decode().splitlines()
        assert meta[0].startswith("image,mask,class,patient_id")
        picked = [line for line in meta[1:] if ",covid19," in line]
        assert all(",md1," in line for line in picked)  # the reviewer behind each mask
        assert len(zf.read("folds.csv").decode().splitlines()) == 5


def test_the_same_data_exports_to_the_same_bytes(reviewing_round, md):
    rnd = reviewing_round(images=2)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    first = build(list(export_rows({})))
    second = build(export_rows({}))  # a stream gives the same bytes as a list
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()


def test_filters_select_by_class_and_round(reviewing_round, md, make_image):
    rnd = reviewing_round(images=2)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="A", seconds=1)
    make_image(covid=False)
    assert export_count({"classes": ["normal"]}) == 1
    assert export_count({"round": rnd.number}) == 2
    assert export_count({"accepted_only": False}) == 3
    with pytest.raises(DomainError, match="there is no round 42"):
        services.export_filters_clean({"round": 42})


def test_the_central_directory_waits_on_disk_and_the_zip_stays_valid(tmp_path):
    """More entries than a plain zip's count field holds, the directory spilled as it goes."""
    from annotation.exporting import _FlatZip, _info

    n = 66_000
    path = tmp_path / "many.zip"
    with path.open("w+b") as out, _FlatZip(out, "w", allowZip64=True) as zf:
        for i in range(n):
            zf.writestr(_info(f"images/{i:06d}.png", zipfile.ZIP_STORED), b"x" * (i % 5))
            if i % 1000 == 999:
                zf.spill()
                assert zf.filelist == []
    with zipfile.ZipFile(path) as zf:
        assert len(zf.namelist()) == n
        assert zf.testzip() is None
        assert zf.read("images/065999.png") == b"x" * (65_999 % 5)
