"""Importing folders: the three layouts, duplicates, rejects with reasons, whole-or-nothing."""

import csv
import io

import numpy as np
import pytest
from PIL import Image as PILImage

from annotation import imaging
from annotation.ingest import ingest_folder
from annotation.models import GroundTruth, Image, ImageClass, Mask
from annotation.phantoms import make_phantom

pytestmark = pytest.mark.django_db


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def phantom_png(seed: int, size: int = 64) -> tuple[bytes, bytes]:
    p = make_phantom(seed, size=size)
    return imaging.encode_png(p.image), imaging.encode_mask(p.infection)


def test_qata_layout_imports_images_with_their_ground_truth_masks(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Ground-truths").mkdir()
    for i in range(3):
        image, mask = phantom_png(i)
        (tmp_path / "Images" / f"covid_{i}.png").write_bytes(image)
        if i < 2:
            (tmp_path / "Ground-truths" / f"mask_covid_{i}.png").write_bytes(mask)
    report = ingest_folder(tmp_path)
    assert report.layout == "qata"
    assert len(report.imported) == 3
    assert Mask.objects.filter(source=Mask.Source.IMPORTED).count() == 2
    assert Image.objects.filter(status=Image.Status.MANUAL).count() == 2
    assert Image.objects.filter(status=Image.Status.UNANNOTATED).count() == 1


def test_covid_qu_ex_layout_reads_classes_infection_and_lung_masks(tmp_path):
    for cls, n in [("COVID-19", 2), ("Non-COVID", 1), ("Normal", 1)]:
        base = tmp_path / "Test" / cls
        for sub in ("images", "infection masks", "lung masks"):
            (base / sub).mkdir(parents=True)
        for i in range(n):
            image, mask = phantom_png(hash((cls, i)) % 1000)
            name = f"{cls}_{i}.png"
            (base / "images" / name).write_bytes(image)
            (base / "infection masks" / name).write_bytes(mask)
            (base / "lung masks" / name).write_bytes(mask)
    report = ingest_folder(tmp_path)
    assert report.layout == "covid-qu-ex"
    assert len(report.imported) == 4
    assert Image.objects.filter(image_class=ImageClass.COVID).count() == 2
    assert Image.objects.exclude(lung_mask="").count() == 4
    # controls are negative by definition: an empty mask is their ground truth
    controls = Image.objects.filter(image_class__in=ImageClass.controls())
    assert controls.count() == 2
    assert all(c.status == Image.Status.ACCEPTED for c in controls)
    assert GroundTruth.objects.filter(mask__source=Mask.Source.CONTROL, mask__area=0).count() == 2


def test_csv_layout_duplicates_and_rejects_are_reported_and_rerun_changes_nothing(tmp_path):
    image, _ = phantom_png(1)
    (tmp_path / "a.png").write_bytes(image)
    (tmp_path / "a_copy.png").write_bytes(image)
    (tmp_path / "b.jpg").write_bytes(_jpeg(phantom_png(2)[0]))
    (tmp_path / "truncated.png").write_bytes(phantom_png(3)[0][:200])
    (tmp_path / "notes.png").write_bytes(b"these are my notes, not an image")
    (tmp_path / "sixteen.png").write_bytes(
        png(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 3)
    )
    (tmp_path / "rgba.png").write_bytes(png(np.full((40, 40, 4), 200, dtype=np.uint8)))
    rows = [
        ["file", "class", "patient"],
        ["a.png", "COVID-19", "P1"],
        ["a_copy.png", "COVID-19", "P1"],
        ["b.jpg", "Normal", "P2"],
        ["truncated.png", "COVID-19", "P3"],
        ["notes.png", "COVID-19", "P4"],
        ["missing.png", "COVID-19", "P5"],
        ["sixteen.png", "COVID-19", "P6"],
        ["rgba.png", "Non-COVID", "P7"],
    ]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)

    report = ingest_folder(tmp_path)
    assert report.layout == "csv"
    assert sorted(report.imported) == ["a.png", "b.jpg", "rgba.png", "sixteen.png"]
    assert report.duplicates == ["a_copy.png"]
    reasons = dict(report.rejected)
    assert "truncated" in reasons["truncated.png"] or "damaged" in reasons["truncated.png"]
    assert "not a PNG or JPEG" in reasons["notes.png"]
    assert "No such file" in reasons["missing.png"]
    assert "rejected: 3" in report.summary()

    sixteen = Image.objects.get(name="sixteen.png")
    gray = np.asarray(PILImage.open(sixteen.display.path))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255
    assert Image.objects.get(name="a.png").patient_id == "P1"
    with open(Image.objects.get(name="b.jpg").original.path, "rb") as fh:
        assert fh.read() == (tmp_path / "b.jpg").read_bytes()  # the original, unchanged

    before = (Image.objects.count(), Mask.objects.count())
    again = ingest_folder(tmp_path)
    assert again.imported == [] and len(again.duplicates) == 5
    assert (Image.objects.count(), Mask.objects.count()) == before


def test_an_image_with_a_wrong_size_mask_is_not_imported_at_all(tmp_path):
    (tmp_path / "Images").mkdir()
    (tmp_path / "Ground-truths").mkdir()
    image, _ = phantom_png(5, size=64)
    _, small_mask = phantom_png(5, size=32)
    (tmp_path / "Images" / "x.png").write_bytes(image)
    (tmp_path / "Ground-truths" / "mask_x.png").write_bytes(small_mask)
    report = ingest_folder(tmp_path)
    assert report.imported == []
    assert "32×32 pixels but the image is 64×64" in dict(report.rejected)["Images/x.png"]
    assert not Image.objects.exists() and not Mask.objects.exists()


def test_an_unknown_folder_layout_says_what_is_expected(tmp_path):
    from annotation.errors import DomainError

    with pytest.raises(DomainError, match="QaTa-COV19"):
        ingest_folder(tmp_path)


def _jpeg(png_bytes: bytes) -> bytes:
    buf = io.BytesIO()
    PILImage.open(io.BytesIO(png_bytes)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("with_png", [True, False])
def test_qata_layout_takes_dicom_files_with_their_masks_and_controls(tmp_path, with_png):
    """A .dcm in QaTa's Images/ is COVID-19 with the mask named like it; one below
    Control_Group/ a control; no --class needed, with or without PNGs beside them."""
    from tests.annotation.test_dicom_import import dicom_file

    (tmp_path / "Images").mkdir()
    (tmp_path / "Ground-truths").mkdir()
    (tmp_path / "Control_Group").mkdir()
    if with_png:
        image, mask = phantom_png(0)
        (tmp_path / "Images" / "covid_0.png").write_bytes(image)
        (tmp_path / "Ground-truths" / "mask_covid_0.png").write_bytes(mask)
    pixels = (make_phantom(1, size=48).image.astype(np.uint16) * 16).astype(np.uint16)
    (tmp_path / "Images" / "covid_1.dcm").write_bytes(dicom_file(pixels))
    drawn = np.zeros((48, 48), dtype=bool)
    drawn[10:20, 12:30] = True
    (tmp_path / "Ground-truths" / "mask_covid_1.png").write_bytes(imaging.encode_mask(drawn))
    control = (make_phantom(2, size=48).image.astype(np.uint16) * 16).astype(np.uint16)
    (tmp_path / "Control_Group" / "normal_1.dcm").write_bytes(dicom_file(control))

    report = ingest_folder(tmp_path)
    assert report.layout == "qata" and not report.rejected, report.summary()
    assert len(report.imported) == 3 if with_png else 2
    covid = Image.objects.get(name="covid_1.dcm")
    assert covid.image_class == ImageClass.COVID and covid.sop_instance_uid
    mask = covid.masks.get(source=Mask.Source.IMPORTED)
    with mask.file.open("rb") as fh:
        assert (imaging.read_mask_png(fh.read()) == drawn).all()
    assert Image.objects.get(name="normal_1.dcm").image_class == ImageClass.NON_COVID
    assert ingest_folder(tmp_path).imported == []  # a re-run adds nothing
