"""DICOM import: each transfer syntax, MONOCHROME1, 16-bit, refusals from the header, UIDs and
patient ids, idempotent re-ingest, and the upload API. The files are made here with pydicom."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    generate_uid,
)

from annotation import services, storage
from annotation.imaging import InvalidImageError
from annotation.ingest import ingest_folder
from annotation.models import Image, ImageClass

pytestmark = pytest.mark.django_db

DX = UID("1.2.840.10008.5.1.4.1.1.1.1")  # Digital X-Ray Image Storage - For Presentation


def ramp(bits: int = 12, h: int = 40, w: int = 48) -> np.ndarray:
    top = 2**bits - 1
    return np.linspace(0, top, h * w).round().reshape(h, w).astype(np.uint16)


def dicom_file(
    pixels: np.ndarray | None = None,
    *,
    syntax: UID = ExplicitVRLittleEndian,
    bits: int = 12,
    sop: str | None = None,
    preamble: bool = True,
    **elements,
) -> bytes:
    """A DX CXR as DICOM bytes; `elements` set (or, given None, remove) header elements."""
    pixels = ramp(bits) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = UID(sop) if sop else generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SeriesInstanceUID = "1.2.3.4.5.6"
    ds.PatientID = "MRN-0042"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.139, 0.14]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = 8 if pixels.dtype == np.uint8 else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if syntax == JPEGBaseline8Bit:  # no encoder in pydicom: a JPEG from Pillow, encapsulated
        buf = io.BytesIO()
        PILImage.fromarray(pixels).save(buf, format="JPEG", quality=95)
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if syntax == JPEG2000Lossless:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(JPEG2000Lossless)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=preamble, implicit_vr=syntax == ImplicitVRLittleEndian)
    return out.getvalue()


def create(data: bytes, name: str = "cxr.dcm", **kw) -> Image:
    return services.image_create(
        data=data, name=name, source="pacs", image_class=ImageClass.COVID, **kw
    )


def display(image: Image) -> np.ndarray:
    with storage.open_file(image.display.name) as fh:
        return np.asarray(PILImage.open(io.BytesIO(fh.read())))


def stretched(pixels: np.ndarray) -> np.ndarray:
    p = pixels.astype(np.float64)
    return np.round((p - p.min()) / (p.max() - p.min()) * 255).astype(np.uint8)


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
    ],
    ids=lambda s: s.keyword,
)
def test_each_transfer_syntax_imports_with_its_header_fields(syntax):
    pixels = ramp(8).astype(np.uint8) if syntax == JPEGBaseline8Bit else ramp(12)
    data = dicom_file(pixels, syntax=syntax)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax

    image = create(data)

    assert (image.width, image.height) == (48, 40)
    shown = display(image)
    if syntax == JPEGBaseline8Bit:  # lossy: close, not equal
        assert np.abs(shown.astype(int) - stretched(pixels).astype(int)).max() <= 8
    else:
        np.testing.assert_array_equal(shown, stretched(pixels))
    with storage.open_file(image.original.name) as fh:
        assert fh.read() == data  # the original, byte for byte
    assert image.original.name.endswith(".dcm")
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.sop_instance_uid == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert (image.study_uid, image.series_uid) == ("1.2.3.4.5", "1.2.3.4.5.6")
    assert (image.modality, image.view_position) == ("DX", "PA")
    assert image.pixel_spacing == [0.139, 0.14]
    assert image.patient_id == "MRN-0042"


def test_monochrome1_is_inverted_and_the_window_applied():
    pixels = ramp(12)
    normal = create(dicom_file(pixels, WindowCenter=2048, WindowWidth=4096), name="m2.dcm")
    inverted = create(
        dicom_file(
            pixels, PhotometricInterpretation="MONOCHROME1", WindowCenter=2048, WindowWidth=4096
        ),
        name="m1.dcm",
    )
    m2, m1 = display(normal), display(inverted)
    assert m2[0, 0] == 0 and m2[-1, -1] == 255
    np.testing.assert_array_equal(m1, 255 - m2)
    narrow = create(dicom_file(pixels, WindowCenter=2048, WindowWidth=1024), name="w.dcm")
    shown = display(narrow)
    assert (shown[pixels < 1536] == 0).all() and (shown[pixels > 2560] == 255).all()


def test_16_bit_pixels_are_kept_in_the_original():
    pixels = ramp(16)
    pixels[0, 0], pixels[-1, -1] = 0, 65535
    image = create(dicom_file(pixels, bits=16))
    with storage.open_file(image.original.name) as fh:
        kept = pydicom.dcmread(io.BytesIO(fh.read())).pixel_array
    assert kept.dtype == np.uint16
    np.testing.assert_array_equal(kept, pixels)
    shown = display(image)
    assert shown.dtype == np.uint8 and shown.min() == 0 and shown.max() == 255


REFUSED = {
    "multi-frame": ({"NumberOfFrames": 2}, "2 frames"),
    "computed-tomography": ({"Modality": "CT"}, "modality CT, not a radiograph"),
    "ultrasound": ({"Modality": "US"}, "modality US"),
    "no-modality": ({"Modality": None}, "modality unknown"),
    "no-pixel-data": ({"PixelData": None}, "without an image"),
    # The header claims 60000×60000 over 3840 bytes of pixels: refused from the header, never
    # decoded (a decode would fail on the pixel data's length instead).
    "header-bomb-60000-rows": ({"Rows": 60000, "Columns": 60000}, "limit of 8192 pixels"),
    "header-bomb-pixels": ({"Rows": 7000, "Columns": 7000}, "megapixels"),
}


@pytest.mark.parametrize(("elements", "says"), REFUSED.values(), ids=REFUSED.keys())
def test_refused_from_the_header_with_a_reason(elements, says):
    with pytest.raises(InvalidImageError, match=says):
        create(dicom_file(**elements))
    assert Image.objects.count() == 0


def test_deflated_header_bomb_is_refused_before_inflating_the_pixels():
    data = dicom_file(syntax=DeflatedExplicitVRLittleEndian, Rows=60000, Columns=60000)
    with pytest.raises(InvalidImageError, match="limit of 8192 pixels"):
        create(data)


def test_salted_patient_id(settings):
    settings.MASKLOOP_PATIENT_ID_SALT = "s3cret"
    image = create(dicom_file())
    assert image.patient_id == hashlib.sha256(b"s3cretMRN-0042").hexdigest()[:16]
    assert "MRN" not in image.patient_id
    given = create(dicom_file(), name="b.dcm", patient_id="P7")  # a listed patient id wins
    assert given.patient_id == "P7"


def test_ingest_twice_adds_nothing_and_the_same_instance_re_encoded_is_a_duplicate(tmp_path):
    tmp_path = tmp_path / "data"  # not the test's media folder, which holds the stored files
    sop = generate_uid()
    (tmp_path / "study").mkdir(parents=True)
    (tmp_path / "study" / "a.dcm").write_bytes(dicom_file(sop=sop))
    (tmp_path / "study" / "IM0002").write_bytes(dicom_file())  # no ending: found by "DICM"
    (tmp_path / "notes.txt").write_text("not an image")

    with pytest.raises(Exception, match="--class"):
        ingest_folder(tmp_path)  # a DICOM header names no COVID-19 class
    first = ingest_folder(tmp_path, image_class=ImageClass.NORMAL)
    assert first.layout == "dicom"
    assert sorted(first.imported) == ["study/IM0002", "study/a.dcm"], first.summary()
    assert Image.objects.count() == 2
    assert all(i.is_control and i.status == Image.Status.ACCEPTED for i in Image.objects.all())

    out = io.StringIO()
    call_command("ingest", str(tmp_path), "--class", "normal", stdout=out)
    assert "imported: 0" in out.getvalue() and "duplicate (skipped): 2" in out.getvalue()
    assert Image.objects.count() == 2

    # The same SOP instance in another transfer syntax: other bytes, the same image.
    (tmp_path / "study" / "a-implicit.dcm").write_bytes(
        dicom_file(sop=sop, syntax=ImplicitVRLittleEndian)
    )
    again = ingest_folder(tmp_path, image_class=ImageClass.NORMAL)
    assert again.imported == [] and "study/a-implicit.dcm" in again.duplicates
    assert Image.objects.count() == 2


def test_a_csv_lists_dicom_files_with_their_class_and_the_rest_are_rejected(tmp_path):
    tmp_path = tmp_path / "data"
    tmp_path.mkdir()
    (tmp_path / "x1.dcm").write_bytes(dicom_file())
    (tmp_path / "x2.dcm").write_bytes(dicom_file(Modality="CT"))
    (tmp_path / "x3.dcm").write_bytes(dicom_file())  # not listed
    (tmp_path / "list.csv").write_text("file,class,patient\nx1.dcm,COVID-19,P1\nx2.dcm,Normal,P2\n")
    report = ingest_folder(tmp_path)
    assert report.layout == "csv"
    assert report.imported == ["x1.dcm"]
    reasons = dict(report.rejected)
    assert "modality CT" in reasons["x2.dcm"]
    assert "no class" in reasons["x3.dcm"]
    image = Image.objects.get()
    assert (image.image_class, image.patient_id) == (ImageClass.COVID, "P1")


def test_upload_api_takes_a_dicom_file(api, admin_user):
    data = dicom_file(ramp(12), ViewPosition="AP")
    upload = io.BytesIO(data)
    upload.name = "IM0001"  # no ending: the preamble says DICOM
    response = api(admin_user).post(
        "/api/images/upload/", {"file": upload, "image_class": "covid19"}, format="multipart"
    )
    assert response.status_code == 201, response.content
    image = Image.objects.get(pk=response.json()["id"])
    assert (image.modality, image.view_position, image.width) == ("DX", "AP", 48)
    refused = io.BytesIO(dicom_file(Modality="MR"))
    refused.name = "head.dcm"
    response = api(admin_user).post(
        "/api/images/upload/", {"file": refused, "image_class": "covid19"}, format="multipart"
    )
    assert response.status_code == 400 and "modality MR" in response.content.decode()
