"""Images and mask versions: import, drawing, and each image's workflow status."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.db.models import Case, Exists, Max, OuterRef, Value, When
from django.utils import timezone

from annotation import dicom, imaging, storage
from annotation.errors import Conflict, DomainError
from annotation.models import (
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReviewItem,
    Round,
)
from annotation.services import states
from annotation.services.screening import HashLookup, screening_check, screening_fields


class DuplicateImage(Conflict):
    def __init__(self, existing: Image):
        super().__init__(f"identical to image {existing.pk} ({existing.name}), already imported")
        self.existing = existing


def upload_limits() -> imaging.ImageLimits:
    """The largest image accepted (the MASKLOOP_MAX_IMAGE_SIDE and _PIXELS settings)."""
    return imaging.ImageLimits(
        max_side=settings.MASKLOOP_MAX_IMAGE_SIDE, max_pixels=settings.MASKLOOP_MAX_IMAGE_PIXELS
    )


def upload_check_size(*, size: int, what: str) -> None:
    """Refuses a file larger than the MASKLOOP_MAX_UPLOAD_BYTES setting."""
    limit = settings.MASKLOOP_MAX_UPLOAD_BYTES
    if size > limit:
        raise DomainError(
            f"{what} is {size / 2**20:.1f} MiB; files are limited to {limit / 2**20:.1f} MiB"
        )


def patient_id_from_dicom(value: str) -> str:
    """A DICOM PatientID as stored: sha256(salt + id)[:16] when MASKLOOP_PATIENT_ID_SALT is set
    (the same patient gets the same id, so folds still keep a patient's images together)."""
    salt = settings.MASKLOOP_PATIENT_ID_SALT
    if not value or not salt:
        return value
    return hashlib.sha256((salt + value).encode()).hexdigest()[:16]


def _decode(data: bytes, name: str) -> tuple[imaging.DecodedImage | dicom.DicomImage, str]:
    """The CXR's 8-bit copy and the original's file ending: PNG / JPEG by content, DICOM by its
    preamble or its name. DICOM headers are checked before decoding: single-frame radiographs
    (CR, DX) with pixel data within the size limits."""
    if dicom.is_dicom(data, name) and not data.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        decoded = dicom.decode_dicom(
            data,
            name,
            upload_limits(),
            modalities=dicom.RADIOGRAPH_MODALITIES,
            single_frame=True,
        )
        return decoded, "dcm"
    image = imaging.decode_image(data, what=name, limits=upload_limits())
    # The stored name takes its ending from the name only when it is a plain image ending.
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return image, ext if ext in ("png", "jpg", "jpeg") else image.format.lower()


def _check_text(value: str, *, field: str, what: str) -> None:
    """A text that fits its column and holds no NUL or other control character."""
    limit = Image._meta.get_field(field).max_length  # type: ignore[union-attr]
    assert limit is not None, f"Image.{field} has no max_length"
    if len(value) > limit:
        raise DomainError(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise DomainError(f"{what} holds a NUL or other control character")


@transaction.atomic
def image_create(
    *,
    data: bytes,
    name: str,
    source: str,
    image_class: str,
    patient_id: str = "",
    mask_data: bytes | None = None,
    lung_mask_data: bytes | None = None,
    hash_lookup: HashLookup | None = None,
) -> Image:
    """Imports one CXR (and its mask, if any) whole, or nothing.

    PNG, JPEG or DICOM (annotation.dicom). The original bytes are kept unchanged (a DICOM file
    with its 16-bit pixels and its header); an 8-bit grayscale PNG is stored for display and
    training. A DICOM image's UIDs, modality, view position and pixel spacing are recorded, and
    its PatientID (salted and hashed with MASKLOOP_PATIENT_ID_SALT) unless `patient_id` is
    given. Control-class images get an empty mask as their ground truth: by definition they
    show no COVID-19 infection.

    The image is screened (annotation.services.screening): a near-duplicate of an image already
    imported (compared through `hash_lookup`, one per folder import), or an almost blank,
    low-contrast, over-exposed or too small image is imported with its flags and held out of
    rounds until an admin keeps it.

    Raises:
        InvalidImageError: the image or its mask cannot be used (the message says why).
        DomainError: a name, source or patient id too long or with a control character, a
            file over the size limit, or an unknown class.
        DuplicateImage: the same bytes, or the same DICOM SOP instance, were imported before.
    """
    if image_class not in ImageClass.values:
        raise DomainError(
            f"unknown class {image_class!r}; classes are {', '.join(ImageClass.values)}"
        )
    _check_text(name, field="name", what="the file name")
    _check_text(source, field="source", what=f"the source of {name}")
    _check_text(patient_id, field="patient_id", what=f"the patient id of {name}")
    for part, what in (
        (data, name),
        (mask_data, f"the mask of {name}"),
        (lung_mask_data, f"the lung mask of {name}"),
    ):
        if part is not None:
            upload_check_size(size=len(part), what=what)
    digest = imaging.sha256_bytes(data)
    existing = Image.objects.filter(sha256=digest).first()
    if existing:
        raise DuplicateImage(existing)
    decoded, ext = _decode(data, name)
    w, h = decoded.width, decoded.height
    fields: dict[str, Any] = {}
    if isinstance(decoded, dicom.DicomImage):
        info = decoded.info
        if info.sop_uid:
            existing = Image.objects.filter(sop_instance_uid=info.sop_uid).first()
            if existing:
                raise DuplicateImage(existing)
        if not patient_id:
            patient_id = patient_id_from_dicom(info.patient_id)
            _check_text(patient_id, field="patient_id", what=f"the PatientID of {name}")
        fields = {
            "study_uid": info.study_uid[:64] or None,
            "series_uid": info.series_uid[:64] or None,
            "sop_instance_uid": info.sop_uid[:64] or None,
            "modality": info.modality[:16] or None,
            "view_position": info.view_position[:16] or None,
            "pixel_spacing": list(info.pixel_spacing) if info.pixel_spacing else None,
        }
    mask = (
        imaging.decode_mask(mask_data, width=w, height=h, what=f"the mask of {name}")
        if (mask_data is not None)
        else None
    )
    lungs = (
        imaging.decode_mask(lung_mask_data, width=w, height=h, what=f"the lung mask of {name}")
        if lung_mask_data is not None
        else None
    )

    fields |= screening_fields(*screening_check(gray=decoded.gray, lookup=hash_lookup))

    written: list[str] = []
    try:
        written.append(storage.store(f"originals/{digest[:2]}/{digest}.{ext}", data))
        written.append(
            storage.store(f"display/{digest[:2]}/{digest}.png", imaging.encode_png(decoded.gray))
        )
        if lungs is not None:
            written.append(
                storage.store(f"lungs/{digest[:2]}/{digest}.png", imaging.encode_mask(lungs))
            )
        image = Image.objects.create(
            name=name,
            original=written[0],
            display=written[1],
            lung_mask=written[2] if lungs is not None else "",
            sha256=digest,
            width=w,
            height=h,
            source=source,
            image_class=image_class,
            patient_id=patient_id,
            **fields,
        )
        if image.is_control:
            control = mask_create(
                image=image, mask=np.zeros((h, w), dtype=bool), source=Mask.Source.CONTROL
            )
            GroundTruth.objects.create(image=image, mask=control)
        elif mask is not None:
            mask_create(image=image, mask=mask, source=Mask.Source.IMPORTED)
        image_refresh_status(image=image)
    except BaseException:
        transaction.set_rollback(True)
        # Mask files written before the failure stay unreferenced; no row points at them.
        storage.delete_quietly(written)
        raise
    return image


def mask_create(
    *,
    image: Image,
    mask: np.ndarray,
    source: str,
    author: Any = None,
    model_version: Any = None,
    round: Round | None = None,
    based_on: Mask | None = None,
) -> Mask:
    """Adds a new mask version; earlier versions stay as they are."""
    if mask.shape != (image.height, image.width):
        raise DomainError(
            f"mask is {mask.shape[1]}×{mask.shape[0]} but {image.name} is "
            f"{image.width}×{image.height}"
        )
    with transaction.atomic():
        version = mask_next_version(image_id=image.pk)
        data = imaging.encode_mask(mask)
        name = storage.store(f"masks/{image.pk}/v{version}.png", data)
        try:
            return Mask.objects.create(
                image=image,
                version=version,
                file=name,
                sha256=imaging.sha256_bytes(data),
                area=int(mask.sum()),
                source=source,
                author=author,
                model_version=model_version,
                round=round,
                based_on=based_on,
            )
        except BaseException:
            storage.delete_quietly([name])
            raise


def mask_next_version(*, image_id: int) -> int:
    """Locks the image (masks are numbered one after another) and returns its next version."""
    Image.objects.select_for_update().filter(pk=image_id).first()
    return (Mask.objects.filter(image_id=image_id).aggregate(v=Max("version"))["v"] or 0) + 1


DRAWABLE = (Image.Status.UNANNOTATED, Image.Status.MANUAL, Image.Status.REDRAW)


@transaction.atomic
def mask_draw(*, image: Image, author: Any, data: bytes, based_on: Mask | None = None) -> Mask:
    """Saves an MD's drawing as a new mask version.

    A drawing for an image waiting for a redraw becomes its ground truth at once: the reviewers
    already rejected every candidate, and the MD drew this one instead.
    """
    image = Image.objects.select_for_update().get(pk=image.pk)
    if image.status not in DRAWABLE:
        raise Conflict(
            f"{image.name} is {image.get_status_display().lower()}; it can be drawn only while it "
            "needs a first mask or a redraw"
        )
    if based_on is not None and based_on.image_id != image.pk:
        raise DomainError("the mask to start from belongs to another image")
    upload_check_size(size=len(data), what="the mask")
    # Its size and format come from the header, checked against the image before decoding.
    pixels = imaging.decode_mask(data, width=image.width, height=image.height)
    mask = mask_create(
        image=image, mask=pixels, source=Mask.Source.DRAWN, author=author, based_on=based_on
    )
    item = image.review_items.filter(status=ReviewItem.Status.REDRAW).order_by("-id").first()
    if item is not None:
        states.move(item, ReviewItem.Status.REDRAWN, resolved_at=timezone.now())
        GroundTruth.objects.create(image=image, mask=mask, item=item, accepted_by=author)
    image_refresh_status(image=image)
    return mask


@transaction.atomic
def starting_mask_save(*, image: Image, mask: np.ndarray, model_version: Any) -> Mask:
    """Keeps a network's prediction for `image` as a machine mask an MD can start a first
    drawing from (source predicted, provenance the model version, in no round).

    One per image and network: a second request returns the first mask, so pressing the button
    twice stores nothing new.

    Raises:
        Conflict: the image is not open to a first drawing, or is under review.
    """
    from annotation import selectors

    image = Image.objects.select_for_update().get(pk=image.pk)
    reason = selectors.starting_mask_refusal(image)
    if reason is not None:
        raise Conflict(reason)
    existing = selectors.starting_mask_of(image, model_version)
    if existing is not None:
        return existing
    return mask_create(
        image=image, mask=mask, source=Mask.Source.PREDICTED, model_version=model_version
    )


def image_refresh_status(*, image: Image) -> Image:
    """Recomputes an image's workflow status from its masks, items and ground truth."""
    items = image.review_items.exclude(status=ReviewItem.Status.CANCELLED)
    statuses = set(items.values_list("status", flat=True))
    if image.ground_truths.exists():
        status = Image.Status.ACCEPTED
    elif ReviewItem.Status.REDRAW in statuses:
        status = Image.Status.REDRAW
    elif statuses & {ReviewItem.Status.OPEN, ReviewItem.Status.ADJUDICATION}:
        status = Image.Status.IN_REVIEW
    elif ReviewItem.Status.PENDING in statuses:
        status = Image.Status.IN_ROUND
    elif image.masks.filter(source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED]).exists():
        status = Image.Status.MANUAL
    else:
        status = Image.Status.UNANNOTATED
    if status != image.status:
        Image.objects.filter(pk=image.pk).update(status=status)
        image.status = status
    return image


def images_refresh_status(*, image_ids: Iterable[int]) -> int:
    """`image_refresh_status` for many images in one UPDATE (the same rules, in SQL).

    Used by the bulk round steps, where a query or two per image would hold the batch's locks
    for seconds. Returns how many images changed status.
    """
    ids = list(image_ids)
    if not ids:
        return 0
    items = ReviewItem.objects.filter(image=OuterRef("pk")).exclude(
        status=ReviewItem.Status.CANCELLED
    )
    It, S = ReviewItem.Status, Image.Status
    status = Case(
        When(Exists(GroundTruth.objects.filter(image=OuterRef("pk"))), then=Value(S.ACCEPTED)),
        When(Exists(items.filter(status=It.REDRAW)), then=Value(S.REDRAW)),
        When(Exists(items.filter(status__in=[It.OPEN, It.ADJUDICATION])), then=Value(S.IN_REVIEW)),
        When(Exists(items.filter(status=It.PENDING)), then=Value(S.IN_ROUND)),
        When(
            Exists(
                Mask.objects.filter(
                    image=OuterRef("pk"), source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED]
                )
            ),
            then=Value(S.MANUAL),
        ),
        default=Value(S.UNANNOTATED),
    )
    return Image.objects.filter(pk__in=ids).exclude(status=status).update(status=status)


def latest_manual_mask(image: Image) -> Mask | None:
    return (
        image.masks.filter(source__in=[Mask.Source.DRAWN, Mask.Source.IMPORTED])
        .order_by("-version")
        .first()
    )
