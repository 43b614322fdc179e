"""Screening at import: flags an image as it is imported, and records an admin's keep or
exclude. A flagged image is imported but no round takes it (Screening.eligible) until an admin
keeps it. The checks themselves live in annotation/screening.py (no Django)."""

from __future__ import annotations

from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction

from annotation import imaging, screening
from annotation.errors import Conflict, DomainError
from annotation.models import Image, Screening, ScreeningDecision


def screening_thresholds() -> screening.Thresholds:
    """The thresholds of the MASKLOOP_NEAR_DUPLICATE_DISTANCE and MASKLOOP_SCREEN_* settings."""
    return screening.Thresholds(
        near_duplicate_distance=settings.MASKLOOP_NEAR_DUPLICATE_DISTANCE,
        min_side=settings.MASKLOOP_SCREEN_MIN_SIDE,
        blank_spread=settings.MASKLOOP_SCREEN_BLANK_SPREAD,
        min_contrast=settings.MASKLOOP_SCREEN_MIN_CONTRAST,
        clipped_fraction=settings.MASKLOOP_SCREEN_CLIPPED_FRACTION,
    )


class HashLookup:
    """The hashes of the images imported so far, read once and then only the new rows (by id),
    so a folder import compares each file against every earlier one without reading them all
    again. One per import (a folder, an upload)."""

    def __init__(self) -> None:
        self.index = screening.HashIndex()
        self.last_id = 0

    def refresh(self) -> None:
        rows = (
            Image.objects.filter(pk__gt=self.last_id)
            .exclude(phash="")
            .order_by("pk")
            .values_list("pk", "phash")
        )
        ids, hexes = [], []
        for pk, phash in rows.iterator(chunk_size=20_000):
            ids.append(pk)
            hexes.append(phash)
        if ids:
            self.index.add(ids, hexes)
            self.last_id = ids[-1]

    def near(self, phash: str, max_distance: int) -> list[tuple[int, int]]:
        self.refresh()
        return self.index.near(phash, max_distance)


def screening_check(
    *, gray: np.ndarray, lookup: HashLookup | None = None
) -> tuple[str, list[screening.Flag]]:
    """The perceptual hash of an image about to be imported, and its flags: the histogram and
    size checks, and a near-duplicate flag naming the closest image already imported."""
    thresholds = screening_thresholds()
    phash = screening.perceptual_hash(gray)
    flags = screening.image_flags(gray, thresholds)
    near = (lookup or HashLookup()).near(phash, thresholds.near_duplicate_distance)
    if near:
        other_id, distance = near[0]
        other = Image.objects.filter(pk=other_id).values_list("name", flat=True).first()
        more = f" (and {len(near) - 1} more)" if len(near) > 1 else ""
        flags.insert(
            0,
            screening.Flag(
                screening.NEAR_DUPLICATE,
                f"{distance} bits from image {other_id} ({other}){more}",
                image=other_id,
                distance=distance,
            ),
        )
    return phash, flags


def screening_fields(phash: str, flags: list[screening.Flag]) -> dict[str, Any]:
    """The Image fields that record a screening result."""
    return {
        "phash": phash,
        "screening": Screening.PENDING if flags else Screening.CLEAR,
        "screening_flags": [f.as_dict() for f in flags],
    }


def screening_summary(image: Image) -> str:
    """The flags of an image in words, e.g. 'near-duplicate: 3 bits from image 7 (a.png)'."""
    return "; ".join(
        f"{screening.LABELS.get(f['code'], f['code'])}: {f['detail']}"
        for f in image.screening_flags
    )


@transaction.atomic
def screening_decide(*, image: Image, decided_by: Any, decision: str, reason: str = "") -> Image:
    """Records an admin's keep or exclude of a screened image (a new row each time; a later
    decision replaces the image's state, never the earlier row).

    Keeping makes the image eligible for the next round; excluding holds it out for good (or
    until kept). Rounds already under way keep what they took.

    Raises:
        DomainError: an unknown decision, or a reason too long.
        Conflict: the image was never flagged.
    """
    if decision not in ScreeningDecision.Choice.values:
        raise DomainError(f"a screening decision is keep or exclude, not {decision!r}")
    reason = reason.strip()
    if len(reason) > 1000:
        raise DomainError("the reason is limited to 1000 characters")
    image = Image.objects.select_for_update().get(pk=image.pk)
    if image.screening == Screening.CLEAR:
        raise Conflict(f"{image.name} passed screening; there is nothing to decide")
    ScreeningDecision.objects.create(
        image=image,
        decision=decision,
        reason=reason,
        flags=image.screening_flags,
        decided_by=decided_by,
    )
    image.screening = (
        Screening.KEPT if decision == ScreeningDecision.Choice.KEEP else Screening.EXCLUDED
    )
    image.save(update_fields=["screening"])
    return image


def images_hash_backfill() -> int:
    """Hashes the images imported before screening existed (no hash yet), from their display
    copies, so that later imports are compared with them too. Flags nothing: those images were
    taken in already. Returns how many were hashed; running it again hashes none."""
    done = 0
    rows = Image.objects.filter(phash="").order_by("pk").only("pk", "name", "display")
    for image in rows.iterator(chunk_size=500):
        with image.display.open("rb") as fh:
            gray = imaging.decode_image(fh.read(), what=image.name).gray
        done += Image.objects.filter(pk=image.pk, phash="").update(
            phash=screening.perceptual_hash(gray)
        )
    return done
