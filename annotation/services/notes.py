"""Comments and flags on images: appended, never edited or deleted."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from annotation.errors import DomainError
from annotation.models import Image, ImageComment, ImageFlag, ImageFlagChange

COMMENT_MAX = 2000


def image_comment_add(*, image: Image, author: Any, text: str) -> ImageComment:
    """Appends a comment. A comment is never edited: a correction is a new comment."""
    text = (text or "").strip()
    if not text:
        raise DomainError("write a comment first")
    if len(text) > COMMENT_MAX:
        raise DomainError(f"a comment holds at most {COMMENT_MAX} characters, not {len(text)}")
    return ImageComment.objects.create(image=image, author=author, text=text)


@transaction.atomic
def image_flags_set(*, image: Image, author: Any, flags: dict[str, bool]) -> list[ImageFlagChange]:
    """Sets or clears the author's own flags on an image: one change row per flag whose state
    differs from the author's current one (setting a set flag records nothing)."""
    unknown = sorted(set(flags) - set(ImageFlag.values))
    if unknown:
        raise DomainError(
            f"unknown flag {', '.join(unknown)}; flags are {', '.join(ImageFlag.values)}"
        )
    # The author's rows for this image, locked by taking the image's row: two saves of the same
    # panel at once record each change once.
    Image.objects.select_for_update().filter(pk=image.pk).first()
    current: dict[str, bool] = {}
    for change in ImageFlagChange.objects.filter(image=image, author=author).order_by("id"):
        current[change.flag] = change.is_set
    changes = [
        ImageFlagChange(image=image, author=author, flag=flag, is_set=bool(value))
        for flag, value in sorted(flags.items())
        if current.get(flag, False) != bool(value)
    ]
    return ImageFlagChange.objects.bulk_create(changes)
