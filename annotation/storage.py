"""Media files for the annotation app: the storage helpers every app shares (config.storage,
re-exported here) and the cached display copies of CXRs, masks and overlays."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from config.storage import (
    CHUNK,
    delete_quietly,
    download_dir,
    download_response,
    exists,
    local_copy,
    open_file,
    read,
    store,
    stored_name,
    stream_to,
    unique_name,
    upload_dir,
    work_dir,
)

__all__ = [
    "CHUNK",
    "delete_quietly",
    "download_dir",
    "download_response",
    "exists",
    "local_copy",
    "open_file",
    "read",
    "store",
    "stored_name",
    "stream_to",
    "unique_name",
    "upload_dir",
    "work_dir",
    "DISPLAY_SIZES",
    "candidate_display_copies",
    "candidate_display_copy",
    "candidate_display_sizes",
    "display_copy",
]


DISPLAY_SIZES = (512, 1024, 1536, 2048)


def display_copy(name: str | None, max_side: int | None, *, form: str = "image") -> bytes:
    """The stored PNG or a copy of it for display, made once and then read from storage.

    `form` is "image" (a CXR: Lanczos), "mask" (nearest neighbour, stays 0/255) or "overlay"
    (the mask coloured for drawing on its CXR; see imaging.overlay_png). Without `max_side`,
    images and masks are the stored file itself and an overlay has the image's own size.
    """
    from annotation.imaging import downscaled_png, overlay_png

    name = stored_name(name)
    if form not in ("image", "mask", "overlay"):
        raise ValueError(f"unknown display form {form!r}")
    if max_side and max_side not in DISPLAY_SIZES:
        raise ValueError(f"max must be one of {', '.join(map(str, DISPLAY_SIZES))}")
    if not max_side and form != "overlay":
        return read(name)
    if form == "overlay":
        cached = f"display-cache/overlay-{max_side or 'full'}/{name}"
    else:
        cached = f"display-cache/{max_side}/{name}"
    if default_storage.exists(cached):
        return read(cached)
    if form == "overlay":
        data = overlay_png(read(name), max_side)
    else:
        assert max_side  # a full-size image or mask is the stored file, returned above
        data = downscaled_png(read(name), max_side, binary=form == "mask")
    with contextlib.suppress(OSError):  # a copy that cannot be cached is still served
        _save_exactly(cached, data)
    return data


def candidate_display_sizes(width: int, height: int) -> list[int | None]:
    """Every size the review page may fetch of an item of this size: each display size below
    its long side, then the full size (None)."""
    side = max(width, height)
    return [s for s in DISPLAY_SIZES if s < side] + [None]


def candidate_display_copy(
    name: str | None, max_side: int | None, *, form: str, item_key: str, label: str
) -> bytes:
    """A blind-review candidate's mask or overlay, made for one item and label only.

    Each copy is cached under the item and the label (display-cache/items/<item>/<label>/…),
    never under the mask file it was made from, and made from the stored mask itself, never
    from another item's copy: a mask offered again in a later round (the MD's own, after a
    re-run) is made as late, and costs as much, as every other candidate of its item. Its bytes
    are deflated with a nonce of the item, label, form and size (imaging.varied_png): the same
    pixels as before, but bytes that match nothing served for another item.
    """
    return candidate_display_copies(name, [(max_side, form)], item_key=item_key, label=label)[0]


def candidate_display_copies(
    name: str | None, wanted: Sequence[tuple[int | None, str]], *, item_key: str, label: str
) -> list[bytes]:
    """`candidate_display_copy` for several (max_side, form) at once, decoding the stored mask
    at most once (the warm-up of an item makes every size and form of each candidate)."""
    from annotation.imaging import downscaled_png, encode_png, gray_image, overlay_png

    name = stored_name(name)
    decoded: list[Any] = []

    def mask() -> Any:
        if not decoded:
            decoded.append(gray_image(read(name)))
        return decoded[0]

    out = []
    for max_side, form in wanted:
        if form not in ("mask", "overlay"):
            raise ValueError(f"unknown candidate form {form!r}")
        if max_side and max_side not in DISPLAY_SIZES:
            raise ValueError(f"max must be one of {', '.join(map(str, DISPLAY_SIZES))}")
        size = max_side or "full"
        cached = f"display-cache/items/{item_key}/{label}/{form}-{size}.png"
        if default_storage.exists(cached):
            out.append(read(cached))
            continue
        nonce = hmac.new(
            settings.SECRET_KEY.encode(),
            f"{item_key}/{label}/{form}/{size}".encode(),
            hashlib.sha256,
        ).digest()
        if form == "overlay":
            data = overlay_png(mask(), max_side, nonce=nonce)
        elif max_side:
            data = downscaled_png(mask(), max_side, binary=True, nonce=nonce)
        else:
            pixels = np.asarray(mask())
            data = encode_png(np.where(pixels > 127, 255, 0).astype(np.uint8), nonce=nonce)
        with contextlib.suppress(OSError):  # a copy that cannot be cached is still served
            _save_exactly(cached, data)
        out.append(data)
    return out


def _save_exactly(name: str, data: bytes) -> None:
    """Stores `data` under exactly `name`, in one step, replacing what is there.

    Two requests making the same display copy at once then leave one file (the same bytes
    either way), and a reader never sees half of one; default_storage.save would keep both,
    the second under a new name.
    """
    try:
        default_storage.path(name)
    except NotImplementedError:  # an object store: one PUT replaces the object whole
        saved = default_storage.save(name, ContentFile(data))
        if saved != name:  # a store that renames instead of overwriting
            default_storage.delete(saved)
        return
    with stream_to(name) as out:  # a local folder: a temporary file renamed into place
        out.write(data)
