"""Lung masks as a post-filter of machine candidates: no infection outside the lungs.

A predicted infection mask loses every pixel farther than a margin from the image's lung mask.
The margin (a share of the image's longer side, so that it means the same anatomy at any
resolution) keeps opacities at the lung border that a lung mask drawn a little tight would cut.
An image without a usable lung mask keeps its candidate unchanged, and says why.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

APPLIED = "applied"
NO_LUNG_MASK = "no lung mask"
EMPTY_LUNG_MASK = "empty lung mask"
SIZE_MISMATCH = "lung mask of another size"
# The default margin: 2 % of the longer side, 5 px on a 256-px COVID-QU-Ex image.
DEFAULT_MARGIN_PERCENT = 2.0


def margin_pixels(height: int, width: int, margin_percent: float) -> int:
    """The dilation radius in pixels for an image of this size."""
    return int(round(max(height, width) * margin_percent / 100.0))


def lung_filter(
    mask: np.ndarray,
    lungs: np.ndarray | None,
    margin_percent: float = DEFAULT_MARGIN_PERCENT,
) -> tuple[np.ndarray, str]:
    """Removes a candidate's pixels outside the dilated lung mask.

    Args:
        mask: the predicted binary (H, W) infection mask.
        lungs: the image's binary (H, W) lung mask, or None when it has none.
        margin_percent: dilation radius, in percent of the image's longer side (0: the lung
            mask itself).

    Returns:
        (the filtered mask, what happened: APPLIED, or why the mask is unchanged:
        NO_LUNG_MASK, EMPTY_LUNG_MASK or SIZE_MISMATCH)
    """
    mask = np.asarray(mask).astype(bool)
    if lungs is None:
        return mask, NO_LUNG_MASK
    lungs = np.asarray(lungs).astype(bool)
    if lungs.shape != mask.shape:
        return mask, SIZE_MISMATCH  # never stretch a lung mask onto another image
    if not lungs.any():
        return mask, EMPTY_LUNG_MASK
    radius = margin_pixels(mask.shape[0], mask.shape[1], margin_percent)
    allowed = lungs
    if radius > 0:
        # Euclidean distance to the nearest lung pixel: a round dilation of `radius` pixels.
        allowed = ndimage.distance_transform_edt(~lungs) <= radius
    return mask & allowed, APPLIED
