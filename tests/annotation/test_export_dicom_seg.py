"""DICOM-SEG export: one BINARY SEG per image with an accepted mask, read back by highdicom with
pixels equal to the PNG masks, referencing the source DICOM instance (or a derived Secondary
Capture beside it), manual / machine provenance in the segment, two builds byte-identical and
dciodvfy (dicom3tools) reporting no error."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import subprocess
import zipfile

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from annotation import imaging, services, storage
from annotation.models import Export, ImageClass

pytestmark = pytest.mark.django_db

DX = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation
SOURCE_SOP = "1.2.826.0.1.3680043.8.498.4242"


def dx_file(pixels: np.ndarray) -> bytes:
    """An 8-bit DX CXR as DICOM bytes, made with pydicom."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = UID(SOURCE_SOP)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DX, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.5", "1.2.3.4.5.6"
    ds.PatientID, ds.PatientName, ds.Modality, ds.ViewPosition = "MRN-7", "Doe^J", "DX", "PA"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def world(reviewing_round, md, drawer):
    """A Stage I round over a DICOM image and two PNG ones, all drawn by an MD: the reviewer
    accepts the drawing of the DICOM image and a network's mask of each PNG one."""
    pixels = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    dicom = services.image_create(
        data=dx_file(pixels), name="cxr.dcm", source="pacs", image_class=ImageClass.COVID
    )
    drawing = np.zeros((64, 64), dtype=bool)
    drawing[10:30, 20:50] = True
    services.mask_draw(image=dicom, author=drawer, data=imaging.encode_mask(drawing))
    rnd = reviewing_round(images=2)
    assert rnd.items.filter(image=dicom).exists()
    for item in rnd.items.all():
        want = "drawn" if item.image_id == dicom.pk else "predicted"
        label = item.candidates.filter(mask__source=want).values_list("label", flat=True)[0]
        services.decision_create(item=item, reviewer=md, choice=label, seconds=1)


def build(data_user, django_capture_on_commit_callbacks) -> tuple[Export, bytes]:
    with django_capture_on_commit_callbacks(execute=False):
        export = services.export_request(requested_by=data_user, filters={"format": "dicom-seg"})
    export = services.export_build(export=export)
    assert export.status == Export.Status.DONE, export.failure_reason
    with storage.open_file(export.file.name) as fh:
        return export, fh.read()


def test_dicom_seg_round_trip_reference_and_provenance(
    reviewing_round, md, drawer, data_user, api, eager_tasks, django_capture_on_commit_callbacks
):
    world(reviewing_round, md, drawer)
    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = api(data_user).post("/api/exports/", {"format": "dicom-seg"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["filters"]["format"] == "dicom-seg"
    queued[0]()
    export = Export.objects.get(uuid=response.json()["uuid"])
    assert export.status == Export.Status.DONE, export.failure_reason
    with storage.open_file(export.file.name) as fh, zipfile.ZipFile(io.BytesIO(fh.read())) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}

    manifest = json.loads(files["manifest.json"])
    assert list(manifest["files"]) == sorted(manifest["files"])
    assert set(manifest["files"]) == set(files) - {"manifest.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    segs = sorted(n for n in files if n.endswith(".seg.dcm"))
    masks = sorted(n for n in files if n.startswith("masks/"))
    assert len(segs) == len(masks) == 3

    by_source = {}
    for seg_name, mask_name in zip(segs, masks, strict=True):
        seg = hd.seg.segread(io.BytesIO(files[seg_name]))
        expected = np.asarray(PILImage.open(io.BytesIO(files[mask_name])).convert("L")) > 127
        assert expected.any()
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        referenced = ref.ReferencedSOPInstanceUID
        pixels = seg.get_pixels_by_source_instance([referenced], segment_numbers=[1])
        assert pixels.shape == (1, *expected.shape, 1)
        np.testing.assert_array_equal(pixels[0, :, :, 0].astype(bool), expected)
        assert seg.segmentation_type.value == "BINARY" and seg.number_of_segments == 1
        segment = seg.SegmentSequence[0]
        assert segment.SegmentLabel == "COVID-19 infection"
        assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # Lesion
        by_source[seg_name] = (seg, segment, referenced)

    (dicom_seg,) = [v for k, v in by_source.items() if f"{k[:-8]}.sc.dcm" not in files]
    png_segs = {k: v for k, v in by_source.items() if f"{k[:-8]}.sc.dcm" in files}
    assert len(png_segs) == 2
    # The DICOM-sourced image: its own SOP instance, study and patient; drawn: MANUAL.
    seg, segment, referenced = dicom_seg
    assert referenced == SOURCE_SOP and seg.StudyInstanceUID == "1.2.3.4.5"
    assert seg.PatientID == "MRN-7"
    assert (
        segment.SegmentAlgorithmType == "MANUAL" and "drawn by an MD" in segment.SegmentDescription
    )
    assert "SegmentationAlgorithmIdentificationSequence" not in segment
    # The PNG-sourced image: a derived Secondary Capture beside it, of the 8-bit image.
    metadata = csv.DictReader(io.StringIO(files["metadata.csv"].decode()))
    sources = {row["image"]: row["mask_source"] for row in metadata}
    kinds = set()
    for seg_name, (seg, segment, referenced) in png_segs.items():
        sc_name = f"{seg_name[:-8]}.sc.dcm"
        sc = pydicom.dcmread(io.BytesIO(files[sc_name]))
        assert referenced == sc.SOPInstanceUID and sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert seg.StudyInstanceUID == sc.StudyInstanceUID and seg.PatientID == sc.PatientID
        image_name = sc_name.replace("dicom-seg/", "images/").replace(".sc.dcm", ".png")
        png = np.asarray(PILImage.open(io.BytesIO(files[image_name])))
        np.testing.assert_array_equal(sc.pixel_array, png)
        kinds.add(segment.SegmentAlgorithmType)
        if sources[image_name] == "predicted":
            # A network's mask an MD accepted: SEMIAUTOMATIC, naming the network and round.
            assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
            algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
            assert algorithm.AlgorithmName.startswith(("unet/", "unetpp/"))
            assert algorithm.AlgorithmVersion == "round 1"
            assert "predicted by unet" in segment.SegmentDescription
        else:
            assert segment.SegmentAlgorithmType == "MANUAL", sources[image_name]
    assert "SEMIAUTOMATIC" in kinds  # the world holds a machine mask


def test_two_builds_are_byte_identical(
    reviewing_round, md, drawer, data_user, django_capture_on_commit_callbacks
):
    world(reviewing_round, md, drawer)
    first, a = build(data_user, django_capture_on_commit_callbacks)
    second, b = build(data_user, django_capture_on_commit_callbacks)
    assert first.uuid != second.uuid
    assert a == b and first.sha256 == second.sha256
    assert sum(n.endswith(".dcm") for n in zipfile.ZipFile(io.BytesIO(a)).namelist()) == 6


def test_dciodvfy_reports_no_error(
    reviewing_round, md, drawer, data_user, tmp_path, django_capture_on_commit_callbacks
):
    """dicom3tools' validator on every DICOM file of the export (scripts/ensure-services.sh
    installs it)."""
    assert shutil.which("dciodvfy"), "dciodvfy missing: run scripts/ensure-services.sh"
    world(reviewing_round, md, drawer)
    _, data = build(data_user, django_capture_on_commit_callbacks)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if n.endswith(".dcm") and n.startswith("dicom-seg/")]
        zf.extractall(tmp_path, names)
    assert len(names) == 5  # three SEGs and two Secondary Captures
    for name in names:
        run = subprocess.run(
            ["dciodvfy", str(tmp_path / name)], capture_output=True, text=True, check=False
        )
        report = run.stdout + run.stderr
        assert report.strip(), name
        assert not [line for line in report.splitlines() if line.startswith("Error")], report


@pytest.mark.parametrize(
    ("source", "reviewed", "kind", "says"),
    [
        ("predicted", False, "AUTOMATIC", "predicted by unet/densenet121 v3, round 2"),
        ("imported", True, "MANUAL", "imported, round 2"),
    ],
)
def test_segment_provenance_of_the_builder(source, reviewed, kind, says):
    """The Django-free builder: a network's mask nobody reviewed is AUTOMATIC, an imported one
    MANUAL; a mask that does not fit its image is refused."""
    from annotation import dicom_seg

    gray = np.zeros((32, 40), dtype=np.uint8)
    sc = dicom_seg.secondary_capture(gray, image_sha256="a" * 64, patient_id="P1", created=None)
    prov = dicom_seg.SegProvenance(source, "unet/densenet121 v3", 2, reviewed)
    mask = np.zeros((32, 40), dtype=bool)
    mask[4:9, 5:20] = True
    seg = dicom_seg.segmentation(
        mask, source=sc, image_sha256="a" * 64, mask_sha256="b" * 64, prov=prov
    )
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == kind and says in segment.SegmentDescription
    assert str(seg.ContentDate) == str(seg.SeriesDate) == "19800101"  # no mask time: 1980
    with pytest.raises(ValueError, match="the mask is 39×32, the image 40×32"):
        dicom_seg.segmentation(
            mask[:, :39], source=sc, image_sha256="a" * 64, mask_sha256="b" * 64, prov=prov
        )


def test_a_salted_patient_id_replaces_the_original_in_the_seg(
    reviewing_round, md, drawer, data_user, settings, django_capture_on_commit_callbacks
):
    """With MASKLOOP_PATIENT_ID_SALT set the platform stores a hash of the PatientID; the SEG
    of that image carries the stored id, never the original nor the name beside it."""
    settings.MASKLOOP_PATIENT_ID_SALT = "pepper"
    world(reviewing_round, md, drawer)
    salted = hashlib.sha256(b"pepperMRN-7").hexdigest()[:16]
    _, data = build(data_user, django_capture_on_commit_callbacks)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    rows = {r["image"]: r for r in csv.DictReader(io.StringIO(files["metadata.csv"].decode()))}
    (dicom_row,) = [r for r in rows.values() if r["sop_instance_uid"]]
    assert dicom_row["patient_id"] == salted
    stem = dicom_row["image"].replace("images/", "dicom-seg/").rsplit(".", 1)[0]
    seg_bytes = files[f"{stem}.seg.dcm"]
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    assert seg.PatientID == salted and str(seg.PatientName) == ""
    assert b"MRN-7" not in seg_bytes and b"Doe^J" not in seg_bytes
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == SOURCE_SOP  # still references its source


def test_metadata_csv_carries_the_dicom_uids(
    reviewing_round, md, drawer, data_user, django_capture_on_commit_callbacks
):
    world(reviewing_round, md, drawer)
    _, data = build(data_user, django_capture_on_commit_callbacks)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("metadata.csv").decode())))
    uids = sorted((r["study_uid"], r["series_uid"], r["sop_instance_uid"]) for r in rows)
    assert uids == [("", "", ""), ("", "", ""), ("1.2.3.4.5", "1.2.3.4.5.6", SOURCE_SOP)]
