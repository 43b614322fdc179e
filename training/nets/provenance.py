"""What produced a trained network: the code (`code_version`) and the data (`data_version`).

Both have one meaning wherever a network is trained, so the command line and a platform worker
on another host record the same values for the same code and the same files:

- `code_version`: the git commit of the code, or ``MASKLOOP_CODE_VERSION`` where the code runs
  without its git checkout (a container image, a worker host), else "unknown".
- `data_version`: sha256 over the sorted sha256 digests of exactly the image and mask files a
  network was trained on. Sorting makes it independent of order and folder; a file that appears
  twice counts twice.

No TensorFlow and no Django: a platform worker can import this before anything heavy.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

CODE_VERSION_ENV = "MASKLOOP_CODE_VERSION"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_CHUNK = 1 << 20


def code_version() -> str:
    """The code's version: ``$MASKLOOP_CODE_VERSION`` if set, else `git rev-parse HEAD` of the
    checkout this module lives in, else "unknown".

    Returns:
        A commit hash or another short version string (at most 64 characters are meaningful:
        the platform stores 64).
    """
    return os.environ.get(CODE_VERSION_ENV) or _git_head()


@functools.cache
def _git_head() -> str:
    # Cached: the checkout does not change under a running process, and git costs ~10 ms.
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=_REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes.

    Args:
        path: the file.

    Returns:
        64 hex digits (the same as `annotation.imaging.sha256_bytes` of its contents).
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_version_of_digests(digests: Iterable[str]) -> str:
    """`data_version` from per-file digests that are already known (e.g. stored in a database).

    Args:
        digests: hex sha256 of each image and mask file trained on.

    Returns:
        64 hex digits.
    """
    combined = hashlib.sha256()
    for digest in sorted(d.lower() for d in digests):
        combined.update(f"{digest}\n".encode())
    return combined.hexdigest()


def data_version(
    images: Sequence[str | os.PathLike[str]],
    masks: Sequence[str | os.PathLike[str] | None] | None = None,
) -> str:
    """sha256 over the sorted sha256 digests of the image and mask files trained on.

    Args:
        images: image files.
        masks: mask files, one per image; None for an image trained with an empty mask (a
            control) and for a classifier, which reads no masks. None instead of a list: no
            masks at all.

    Returns:
        64 hex digits.

    Raises:
        ValueError: a masks list of another length than images.
    """
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    files = [*images, *(m for m in masks or () if m is not None)]
    return data_version_of_digests(file_sha256(f) for f in files)


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide what a trained network computes.

    Returns:
        {"python": ..., "numpy": ..., "tensorflow": ..., "tf_keras": ...,
        "segmentation_models": ...}; a library that is not installed is left out.
    """
    import numpy as np

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module, key in (
        ("tensorflow", "tensorflow"),
        ("tf_keras", "tf_keras"),
        ("segmentation_models", "segmentation_models"),
    ):
        try:
            imported = __import__(module)
        except ImportError:
            continue
        versions[key] = getattr(imported, "__version__", "unknown")
    return versions
