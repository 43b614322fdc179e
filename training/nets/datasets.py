"""Folders of CXRs and masks → lists of paths, for the CLI and anyone else outside Django.

Nothing is decoded here except, where a folder layout does not say which images are COVID-19,
the masks (an image with a non-empty infection mask is COVID-19). Two public layouts are read:

- QaTa-COV19: ``Images/<name>.png`` and ``Ground-truths/mask_<name>.png``. Images without a
  mask are controls (empty mask).
- COVID-QU-Ex: ``[<split>/]<class>/images/<name>.png`` with siblings ``infection masks/`` and
  ``lung masks/`` holding files of the same name. The class folder ("COVID-19", "Non-COVID",
  "Normal") says which images are COVID-19; controls' infection masks are all zero.

Masks are matched to images by file name: the same name, the same stem with another extension,
or the QaTa ``mask_`` prefix. A ``groups.csv`` (columns ``file,patient``; ``file`` relative to
the data root or a bare file name) next to the data gives patient ids for grouped folds;
without it every image is its own group.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_IMAGE_DIR_NAMES = ("images",)
_MASK_DIR_NAMES = ("infection masks", "infection_masks", "ground-truths", "ground truths",
                   "ground_truths", "groundtruths", "masks")
_LUNG_DIR_NAMES = ("lung masks", "lung_masks", "lungs")
_MASK_PREFIXES = ("mask_", "mask-")
_GROUP_FILES = ("groups.csv", "patients.csv")


@dataclass(frozen=True)
class Sample:
    """One CXR and what is known about it.

    Attributes:
        key: unique id within the data set: the image path relative to the data root.
        image: path of the CXR.
        mask: path of its infection mask; None means an empty mask (a control).
        lung: path of its lung mask, if the data set has one.
        covid: whether the CXR is COVID-19 (the detection ground truth).
        label: the class as the data set names it ("COVID-19", "Normal", "control", ...).
        group: patient id, or None when unknown (the image is then its own group).
    """

    key: str
    image: Path
    mask: Path | None
    lung: Path | None
    covid: bool
    label: str
    group: str | None = None


@dataclass(frozen=True)
class FolderData:
    """Samples of one folder, in a stable order (sorted by key)."""

    root: Path
    samples: tuple[Sample, ...]
    layout: str  # "covid-qu-ex", "qata" or "pairs"
    unmatched_masks: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def images(self) -> list[str]:
        return [str(s.image) for s in self.samples]

    @property
    def masks(self) -> list[str | None]:
        return [None if s.mask is None else str(s.mask) for s in self.samples]

    @property
    def lungs(self) -> list[str | None]:
        return [None if s.lung is None else str(s.lung) for s in self.samples]

    @property
    def covid_flags(self) -> list[bool]:
        return [s.covid for s in self.samples]

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    @property
    def groups(self) -> list[str | None]:
        return [s.group for s in self.samples]

    def summary(self) -> str:
        n_covid = sum(self.covid_flags)
        with_lungs = sum(s.lung is not None for s in self.samples)
        text = (f"{len(self)} images ({n_covid} COVID-19, {len(self) - n_covid} controls) in "
                f"{self.root} [{self.layout} layout]")
        if with_lungs:
            text += f", {with_lungs} with lung masks"
        if self.unmatched_masks:
            text += f"; {len(self.unmatched_masks)} mask(s) without an image were ignored"
        return text


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return (path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
            and not path.name.startswith("."))


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted((p for p in Path(folder).iterdir() if _is_image(p)), key=lambda p: p.name)


def _mask_keys(path: Path) -> list[str]:
    """Names under which a mask file can match an image: its stem with and without "mask_"."""
    stem = path.stem.lower()
    keys = [stem]
    for prefix in _MASK_PREFIXES:
        if stem.startswith(prefix) and len(stem) > len(prefix):
            keys.append(stem[len(prefix):])
            break
    for suffix in ("_mask", "-mask"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            keys.append(stem[: -len(suffix)])
    return keys


def index_masks(folder: Path | None) -> dict[str, Path]:
    """Mask files of a folder by the image stem they belong to.

    Keys are lower-case stems with any "mask_" prefix removed; an exact stem wins over a
    prefixed one.
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


def _find_sibling(folder: Path, names: Sequence[str]) -> Path | None:
    parent = folder.parent
    if not parent.is_dir():
        return None
    by_name = {p.name.lower(): p for p in parent.iterdir() if p.is_dir()}
    for name in names:
        if name in by_name and by_name[name].resolve() != folder.resolve():
            return by_name[name]
    return None


def _covid_from_label(label: str) -> bool | None:
    """COVID-19 for "COVID-19"-like class names, control for others, None if unknown."""
    text = label.lower()
    if re.search(r"non[-_ ]?covid", text) or text in ("normal", "control", "controls", "negative"):
        return False
    if "covid" in text:
        return True
    if "control" in text or "normal" in text or "pneumonia" in text:
        return False
    return None


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


def _read_groups(root: Path) -> dict[str, str]:
    for name in _GROUP_FILES:
        path = root / name
        if not path.is_file():
            continue
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = {f.lower(): f for f in (reader.fieldnames or [])}
            file_col = fields.get("file") or fields.get("image") or fields.get("name")
            group_col = fields.get("patient") or fields.get("group") or fields.get("patient_id")
            if not file_col or not group_col:
                raise ValueError(f"{path} needs columns 'file' and 'patient'")
            return {row[file_col].strip(): row[group_col].strip() for row in reader}
    return {}


def _group_of(groups: dict[str, str], key: str, image: Path) -> str | None:
    return groups.get(key) or groups.get(image.name) or groups.get(image.stem) or None


def pair_folders(
    images_dir: str | os.PathLike[str],
    masks_dir: str | os.PathLike[str] | None = None,
    *,
    lungs_dir: str | os.PathLike[str] | None = None,
    label: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> FolderData:
    """Pairs the images of one folder with masks of the same name.

    Args:
        images_dir: folder of CXRs.
        masks_dir: folder of infection masks (same name, or "mask_<name>"); None: no masks,
            every image is a control.
        lungs_dir: optional folder of lung masks, matched the same way.
        label: class name for all images (e.g. the COVID-QU-Ex class folder); when it names
            COVID-19 or a control class, it decides `covid`; otherwise an image is COVID-19
            when its mask is not empty.
        root: data root that keys are relative to (default: images_dir).

    Returns:
        The paired samples. Images without a mask get mask None.

    Raises:
        FileNotFoundError: a folder does not exist.
        ValueError: the images folder holds no images.
    """
    images_dir = Path(images_dir)
    for folder in (images_dir, masks_dir, lungs_dir):
        if folder is not None and not Path(folder).is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
    images = list_images(images_dir)
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    root_path = Path(root) if root is not None else images_dir
    masks = index_masks(Path(masks_dir) if masks_dir is not None else None)
    lungs = index_masks(Path(lungs_dir) if lungs_dir is not None else None)
    groups = _read_groups(root_path)
    by_label = _covid_from_label(label) if label else None
    used: set[Path] = set()
    samples = []
    for image in images:
        mask = masks.get(image.stem.lower())
        if mask is not None:
            used.add(mask)
        # Without a class folder, a non-empty infection mask is what makes an image COVID-19.
        covid = by_label if by_label is not None else (
            mask is not None and not mask_is_empty(mask)
        )
        key = image.relative_to(root_path).as_posix()
        samples.append(Sample(
            key=key, image=image, mask=mask, lung=lungs.get(image.stem.lower()), covid=covid,
            label=label or ("COVID-19" if covid else "control"),
            group=_group_of(groups, key, image),
        ))
    unmatched = tuple(sorted(set(masks.values()) - used))
    layout = "qata" if any(p.stem.lower().startswith("mask") for p in masks.values()) else "pairs"
    return FolderData(root_path, tuple(samples), layout, unmatched)


def scan(root: str | os.PathLike[str]) -> FolderData:
    """Finds every ``images`` folder under `root` and pairs it with its sibling mask folders.

    Works for a COVID-QU-Ex tree (any depth: ``Train/COVID-19/images``, ``COVID-19/images`` or
    just ``images``), a QaTa-COV19 folder (``Images`` + ``Ground-truths``), and a folder that
    directly holds images (all controls unless a sibling mask folder exists).

    Raises:
        FileNotFoundError: `root` is not a folder.
        ValueError: no images were found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    image_dirs = sorted(
        {Path(d) for d, _, _ in os.walk(root) if Path(d).name.lower() in _IMAGE_DIR_NAMES}
    )
    if not image_dirs:
        if list_images(root):
            return from_images_dir(root)
        raise ValueError(f"no 'images' folder and no images in {root}")
    samples: list[Sample] = []
    unmatched: list[Path] = []
    layouts: set[str] = set()
    for images_dir in image_dirs:
        if not list_images(images_dir):
            continue
        masks_dir = _find_sibling(images_dir, _MASK_DIR_NAMES)
        lungs_dir = _find_sibling(images_dir, _LUNG_DIR_NAMES)
        parent = images_dir.parent
        # The class folder only counts when it is below the root (COVID-QU-Ex); a QaTa root
        # named "QaTa-COV19" must not make every image COVID-19.
        label = parent.name if parent.resolve() != root.resolve() else None
        part = pair_folders(images_dir, masks_dir, lungs_dir=lungs_dir, label=label, root=root)
        samples.extend(part.samples)
        unmatched.extend(part.unmatched_masks)
        named_class = label is not None and _covid_from_label(label) is not None
        qu_ex = lungs_dir is not None or named_class
        layouts.add("covid-qu-ex" if qu_ex else part.layout)
    if not samples:
        raise ValueError(f"no images in the 'images' folders under {root}")
    samples.sort(key=lambda s: s.key)
    layout = layouts.pop() if len(layouts) == 1 else "mixed"
    return FolderData(root, tuple(samples), layout, tuple(unmatched))


def from_images_dir(
    images_dir: str | os.PathLike[str], masks_dir: str | os.PathLike[str] | None = None,
    lungs_dir: str | os.PathLike[str] | None = None,
) -> FolderData:
    """The loader behind the CLI's ``--images DIR [--masks DIR] [--lungs DIR]``.

    - `images_dir` directly holds images: masks come from `masks_dir`, else from a sibling
      mask folder (``infection masks``, ``Ground-truths``, ``masks``); lung masks likewise.
    - otherwise `images_dir` is a data root and is scanned (see `scan`).
    """
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"not a folder: {images_dir}")
    if not list_images(images_dir):
        if masks_dir is not None:
            raise ValueError(f"no images directly in {images_dir} (a data root takes no --masks)")
        return scan(images_dir)
    if masks_dir is None:
        masks_dir = _find_sibling(images_dir, _MASK_DIR_NAMES)
    if lungs_dir is None:
        lungs_dir = _find_sibling(images_dir, _LUNG_DIR_NAMES)
    return pair_folders(images_dir, masks_dir, lungs_dir=lungs_dir)


# --------------------------------------------------------------------------------------------
# Data version
# --------------------------------------------------------------------------------------------


def _file_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_version(
    images: Sequence[str | os.PathLike[str]],
    masks: Sequence[str | os.PathLike[str] | None],
) -> str:
    """A hash of what a network is trained on: the image list and the masks' bytes.

    Images are identified by file name and size (CXRs do not change once ingested; hashing
    tens of thousands of them would cost minutes), masks by their full content (masks are what
    the annotation loop revises). Paths are reduced to file names so that the same data in
    another folder has the same version; the order of the pairs does not matter.

    Args:
        images: image paths.
        masks: mask paths, one per image; None for an empty mask.

    Returns:
        "sha256:<hex>".
    """
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    lines = []
    for image, mask in zip(images, masks, strict=True):
        image_path = Path(image)
        mask_part = "-" if mask is None else f"{Path(mask).name}:{_file_digest(mask)}"
        lines.append(f"{image_path.name}:{image_path.stat().st_size}|{mask_part}\n")
    digest = hashlib.sha256()
    for line in sorted(lines):
        digest.update(line.encode())
    return "sha256:" + digest.hexdigest()
