"""File and folder names → classes, images and their masks: the matching rules of the layouts.

Shared by every layout reader in `training.nets.layouts` (and by ``python -m inference.cli``,
which pairs images with masks the same way):

- a folder or CSV cell names a class by any common spelling (`class_from_name`);
- masks match images by file name: the same name, the same stem with another extension, or
  with a ``mask_`` prefix or ``_mask`` suffix (`index_masks`);
- a mask is empty when it has no foreground, in any of the usual encodings (`mask_is_empty`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from training.nets.samples import COVID, NON_COVID, NORMAL

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Folder names, lower case.
MASK_DIR_NAMES = (
    "infection masks",
    "infection_masks",
    "ground-truths",
    "ground truths",
    "ground_truths",
    "groundtruths",
    "masks",
)
QATA_MASK_DIR_NAMES = ("ground-truths", "ground truths", "ground_truths", "groundtruths")
LUNG_DIR_NAMES = ("lung masks", "lung_masks", "lungs")
CONTROL_DIR_NAMES = ("control_group", "control group", "control-group")
_MASK_PREFIXES = ("mask_", "mask-")
_MASK_SUFFIXES = ("_mask", "-mask")
_CLASS_NAMES = {
    "covid-19": COVID,
    "covid19": COVID,
    "covid": COVID,
    "non-covid": NON_COVID,
    "noncovid": NON_COVID,
    "non-covid-19": NON_COVID,
    "control": NON_COVID,
    "controls": NON_COVID,
    "negative": NON_COVID,
    "normal": NORMAL,
}


def class_from_name(name: str) -> str | None:
    """The class a folder name or CSV cell names, or None if it names none.

    Args:
        name: e.g. "COVID-19", "covid19", "Non-COVID", "non_covid", "Normal", "Control",
            "Viral Pneumonia".

    Returns:
        "COVID-19", "Non-COVID", "Normal" or None.
    """
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    if key in _CLASS_NAMES:
        return _CLASS_NAMES[key]
    if re.search(r"non-?covid", key) or "pneumonia" in key or "control" in key:
        return NON_COVID
    if "covid" in key:
        return COVID
    if "normal" in key:
        return NORMAL
    return None


def is_image(path: Path) -> bool:
    """Whether `path` is an image file (by its suffix; hidden files are not)."""
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if is_image(p)), key=lambda p: p.name)


def _mask_keys(path: Path) -> list[str]:
    """Image stems a mask file can belong to: its own, then without "mask_" / "_mask"."""
    stem = path.stem.lower()
    keys = [stem]
    for prefix in _MASK_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            keys.append(stem[len(prefix) :])
            break
    for suffix in _MASK_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            keys.append(stem[: -len(suffix)])
    return keys


def index_masks(folder: Path | None) -> dict[str, Path]:
    """Mask files of a folder by the lower-case image stem they belong to.

    An exact stem wins over one with a "mask_" prefix or "_mask" suffix removed.
    """
    if folder is None:
        return {}
    index: dict[str, Path] = {}
    exact: set[str] = set()
    for path in list_images(folder):
        keys = _mask_keys(path)
        index[keys[0]] = path
        exact.add(keys[0])
        for key in keys[1:]:
            if key not in exact:
                index.setdefault(key, path)
    return index


def mask_is_empty(path: str | os.PathLike[str]) -> bool:
    """Whether a mask file has no foreground (0/1, 0/255 and 16-bit masks; colour: any channel)."""
    with Image.open(path) as im:
        values = np.asarray(im)
    if values.size == 0:
        return True
    top = float(values.max())
    if top <= 1:
        return top <= 0
    if top <= 255:
        return bool(top <= 127)
    return bool(top <= 32767)


def sibling(folder: Path, names: Sequence[str]) -> Path | None:
    """The folder beside `folder` named by the first of `names` that exists (lower case)."""
    parent = folder.parent
    if not parent.is_dir():
        return None
    by_name = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for name in names:
        if name in by_name and by_name[name].resolve() != folder.resolve():
            return by_name[name]
    return None
