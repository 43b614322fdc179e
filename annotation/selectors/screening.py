"""Reads for the screening page: the flagged images waiting for an admin, and past decisions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from annotation import screening
from annotation.models import Image, Screening, ScreeningDecision


@dataclass
class FlaggedImage:
    image: Image
    flags: list[dict[str, Any]]
    pair: Image | None = None  # the image it nearly duplicates, shown beside it
    decisions: list[ScreeningDecision] = field(default_factory=list)


def screening_flagged(*, state: str = Screening.PENDING, limit: int = 50) -> list[FlaggedImage]:
    """Flagged images in one screening state, oldest first, each with its near-duplicate pair
    and its decisions so far (newest first)."""
    images = list(Image.objects.filter(screening=state).order_by("id")[:limit])
    pair_ids = {
        f["image"]
        for img in images
        for f in img.screening_flags
        if f.get("code") == screening.NEAR_DUPLICATE
    }
    pairs = Image.objects.in_bulk(pair_ids)
    decisions: dict[int, list[ScreeningDecision]] = {}
    for d in ScreeningDecision.objects.filter(image__in=images).select_related("decided_by"):
        decisions.setdefault(d.image_id, []).append(d)
    out = []
    for img in images:
        flags = [
            {**f, "label": screening.LABELS.get(f.get("code", ""), f.get("code", ""))}
            for f in img.screening_flags
        ]
        pair = next((pairs.get(f["image"]) for f in flags if "image" in f), None)
        out.append(FlaggedImage(img, flags, pair, decisions.get(img.pk, [])))
    return out


def screening_counts() -> dict[str, int]:
    """Images per screening state other than clear."""
    counts: dict[str, int] = {
        str(s): 0 for s in (Screening.PENDING, Screening.KEPT, Screening.EXCLUDED)
    }
    for state in Image.objects.exclude(screening=Screening.CLEAR).values_list(
        "screening", flat=True
    ):
        counts[state] += 1
    return counts
