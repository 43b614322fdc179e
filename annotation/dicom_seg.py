"""DICOM-SEG objects of accepted masks, built with highdicom; Django-free and byte-reproducible.

One BINARY segmentation per image, with one segment, "COVID-19 infection" (SCT Finding /
Lesion, in the lung). It references the source SOP instance when the image came from DICOM
(`source_from_dicom` reads the stored original's header), and otherwise a derived Secondary
Capture image built from the image's 8-bit grey pixels (`secondary_capture`), which the export
writes beside it. The segment carries the mask's provenance: MANUAL for a drawn or imported
mask, AUTOMATIC for a network's prediction taken as it is, SEMIAUTOMATIC for one an MD accepted,
the last two with an algorithm identification naming the network and the round.

Two builds of the same data give the same bytes: every UID is derived from the image's and
the mask's sha256 (pydicom's generate_uid with entropy sources), and every date and time is
the mask's creation time, never the clock.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DA, TM

if TYPE_CHECKING:
    from annotation.exporting import ExportRow, Opener

__all__ = [
    "SEG_DIR",
    "SEGMENT_LABEL",
    "SegProvenance",
    "derived_uid",
    "export_files",
    "secondary_capture",
    "segmentation",
    "source_from_dicom",
    "to_bytes",
]

SEG_DIR = "dicom-seg"
SEGMENT_LABEL = "COVID-19 infection"
MANUFACTURER = "maskloop"
SOFTWARE_VERSION = "maskloop-export/1"
_EPOCH = dt.datetime(1980, 1, 1)
_LO = 64  # the longest Long String (LO) value


@dataclass(frozen=True)
class SegProvenance:
    """Where an accepted mask came from, as the export row tells it."""

    mask_source: str  # Mask.Source: drawn, predicted, imported, control
    model: str = ""  # the network ("unet/resnet34 v7") for a predicted mask
    round: int | None = None
    reviewed: bool = False  # an MD's decision accepted it
    created: dt.datetime | None = None  # the mask's creation time: the SEG's dates


def derived_uid(*parts: str) -> UID:
    """A UID that is a function of `parts` alone (pydicom's root, a SHA-512 of the parts)."""
    return generate_uid(entropy_srcs=["maskloop", *parts])


def _stamp(created: dt.datetime | None) -> tuple[str, str]:
    """The date and time (UTC) of the mask's creation, or 1980-01-01 00:00 without one."""
    when = created.astimezone(dt.UTC) if created and created.tzinfo else (created or _EPOCH)
    return when.strftime("%Y%m%d"), when.strftime("%H%M%S")


# The patient and study attributes a SEG copies from its source that DICOM requires present
# (Type 2) but lets be empty: many devices leave some out, and highdicom needs them there.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def source_from_dicom(fh: IO[bytes]) -> Dataset:
    """The stored original's data set up to its pixels: what the SEG references and copies
    (patient, study, frame of reference), with any Type 2 patient / study attribute it lacks
    present and empty."""
    ds = pydicom.dcmread(fh, stop_before_pixels=True)
    for keyword in _TYPE_2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def pseudonymise(source: Dataset, *, patient_id: str) -> None:
    """Gives the source the patient id the platform stored, which the SEG copies: where it is
    not the original's PatientID (salted and hashed, MASKLOOP_PATIENT_ID_SALT, or given at
    import), the original's PatientID, and the name and birth date beside it, stay out."""
    if str(source.get("PatientID", "")) == patient_id:
        return
    source.PatientID = patient_id[:_LO]
    source.PatientName = ""
    source.PatientBirthDate = ""
    for keyword in ("OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames"):
        if keyword in source:
            delattr(source, keyword)


def secondary_capture(
    gray: np.ndarray, *, image_sha256: str, patient_id: str, created: dt.datetime | None
) -> Dataset:
    """A derived Secondary Capture image of the 8-bit grey pixels, for an image that came as a
    PNG or JPEG: a study and series of its own, UIDs from the image's sha256."""
    import highdicom as hd

    date, time = _stamp(created)
    sc = hd.sc.SCImage(
        pixel_array=np.ascontiguousarray(gray, dtype=np.uint8),
        photometric_interpretation=hd.PhotometricInterpretationValues.MONOCHROME2,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("L", "F"),  # as a PA chest film is read
        study_instance_uid=derived_uid("sc-study", image_sha256),
        series_instance_uid=derived_uid("sc-series", image_sha256),
        series_number=1,
        sop_instance_uid=derived_uid("sc-instance", image_sha256),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_id=patient_id[:_LO] or None,
        study_date=date,
        study_time=time,
        content_date=date,
        content_time=time,
    )
    sc.StudyID = "1"
    sc.Modality = "OT"
    _set_dates(sc, date, time, "Series", "InstanceCreation")
    sc.DateOfSecondaryCapture, sc.TimeOfSecondaryCapture = DA(date), TM(time)
    sc.SoftwareVersions = SOFTWARE_VERSION
    sc.DerivationDescription = "8-bit grey copy of an image imported as PNG or JPEG"
    sc.BodyPartExamined = "CHEST"
    _unclock(sc, date, time)
    return sc


def _segment_description(prov: SegProvenance) -> tuple[Any, str]:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    machine = prov.mask_source == "predicted"
    round_text = f"round {prov.round}" if prov.round is not None else "no round"
    if machine:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=(prov.model or "maskloop network")[:_LO],
            family=codes.cid7162.ArtificialIntelligence,
            version=round_text,
        )
        kind = (
            hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
            if prov.reviewed
            else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        )
        text = f"predicted by {prov.model or 'a network'}, {round_text}"
        text += ", accepted by an MD" if prov.reviewed else ""
    else:
        algorithm = None
        kind = hd.seg.SegmentAlgorithmTypeValues.MANUAL
        manual = {"drawn": "drawn by an MD", "imported": "imported", "control": "empty (control)"}
        text = manual.get(prov.mask_source, prov.mask_source or "manual") + f", {round_text}"
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.Finding,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=kind,
        algorithm_identification=algorithm,
        anatomic_regions=[codes.SCT.Lung],
    )
    description.SegmentDescription = f"{SEGMENT_LABEL}: {text}"[:_LO]
    return description, text


def segmentation(
    mask: np.ndarray, *, source: Dataset, image_sha256: str, mask_sha256: str, prov: SegProvenance
) -> Dataset:
    """A BINARY DICOM-SEG of the mask (True inside the infection) on the source image."""
    import highdicom as hd

    if mask.shape != (source.Rows, source.Columns):
        raise ValueError(
            f"the mask is {mask.shape[1]}×{mask.shape[0]}, the image {source.Columns}×{source.Rows}"
        )
    date, time = _stamp(prov.created)
    description, text = _segment_description(prov)
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask.astype(bool)[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=derived_uid("seg-series", image_sha256, mask_sha256),
        series_number=1,
        sop_instance_uid=derived_uid("seg-instance", image_sha256, mask_sha256),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="maskloop",
        software_versions=SOFTWARE_VERSION,
        device_serial_number="1",
        content_description=text[:_LO],
        content_label="INFECTION",
        omit_empty_frames=False,
        content_date=date,
        content_time=time,
        series_description="COVID-19 infection mask",
    )
    _set_dates(seg, date, time, "Series", "InstanceCreation")
    seg.PatientOrientation = source.get("PatientOrientation", "")
    seg.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    # highdicom draws the dimension organization's UID at random: one from the data instead.
    dimension_uid = derived_uid("seg-dimensions", image_sha256, mask_sha256)
    for item in _walk(seg):
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = dimension_uid
    _unclock(seg, date, time)
    return seg


def _set_dates(ds: Dataset, date: str, time: str, *prefixes: str) -> None:
    """Sets <prefix>Date and <prefix>Time for each prefix ("Series": SeriesDate, SeriesTime)."""
    for prefix in prefixes:
        setattr(ds, f"{prefix}Date", DA(date))
        setattr(ds, f"{prefix}Time", TM(time))


def _unclock(ds: Dataset, date: str, time: str) -> None:
    """Sets the times highdicom takes from the clock (the contributing equipment's too) to the
    mask's creation time."""
    for item in _walk(ds):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time


def _walk(ds: Dataset) -> Iterator[Dataset]:
    yield ds
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def to_bytes(ds: Dataset) -> bytes:
    """The data set as a DICOM Part 10 file (explicit VR little endian unless it says so)."""
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def export_files(
    row: ExportRow, stem: str, mask_png: bytes, opener: Opener
) -> list[tuple[str, bytes]]:
    """The export's DICOM files of one image with an accepted mask, as (archive name, bytes) in
    name order: `dicom-seg/<stem>.seg.dcm`, and before it `dicom-seg/<stem>.sc.dcm`, the
    Secondary Capture it references, where the image did not come from DICOM."""
    from PIL import Image as PILImage

    from annotation.imaging import read_mask_png, sha256_bytes, to_gray8

    files: list[tuple[str, bytes]] = []
    created = row.mask_created
    if row.image_ext.lower() == "dcm":
        with opener(row.image_path) as fh:
            source = source_from_dicom(fh)
        pseudonymise(source, patient_id=row.patient_id)
    else:
        with opener(row.image_path) as fh:
            gray = to_gray8(PILImage.open(io.BytesIO(fh.read())))
        source = secondary_capture(
            gray, image_sha256=row.sha256, patient_id=row.patient_id, created=created
        )
        files.append((f"{SEG_DIR}/{stem}.sc.dcm", to_bytes(source)))
    prov = SegProvenance(
        mask_source=row.mask_source,
        model=row.model,
        round=row.round,
        reviewed=row.decision_id is not None or bool(row.reviewer),  # an MD or admin took it
        created=created,
    )
    seg = segmentation(
        read_mask_png(mask_png),
        source=source,
        image_sha256=row.sha256,
        mask_sha256=sha256_bytes(mask_png),
        prov=prov,
    )
    files.append((f"{SEG_DIR}/{stem}.seg.dcm", to_bytes(seg)))
    return files
