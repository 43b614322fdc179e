"""Infection maps, detection, ensembling and severity."""

from __future__ import annotations

import colorsys
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference import maps
from inference.maps import extent


def hue_of(rgb: np.ndarray) -> float:
    r, g, b = (float(c) / 255 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0]


# -- detection and ensemble --------------------------------------------------------------------


@pytest.mark.parametrize(("peak", "expected"), [(0.5, True), (0.4999, False), (1.0, True)])
def test_detect_threshold_is_inclusive(peak: float, expected: bool):
    prob = np.zeros((32, 32), np.float32)
    prob[5, 7] = peak
    assert maps.detect(prob) is expected


def test_detect_custom_threshold_and_nan():
    prob = np.full((4, 4), 0.3)
    assert maps.detect(prob, threshold=0.3)
    assert not maps.detect(np.full((4, 4), np.nan))


def test_ensemble_is_the_mean():
    a = np.full((8, 8), 0.2, np.float32)
    b = np.full((8, 8), 0.6, np.float32)
    c = np.zeros((8, 8), np.float32)
    c[0, 0] = 0.9
    out = maps.ensemble([a, b, c])
    assert out.dtype == np.float32 and out.shape == (8, 8)
    np.testing.assert_allclose(out, (a + b + c) / 3, rtol=1e-6)
    with pytest.raises(ValueError):
        maps.ensemble([])
    with pytest.raises(ValueError):
        maps.ensemble([a, np.zeros((4, 4))])


# -- colour ------------------------------------------------------------------------------------


def test_jet_matches_matplotlib_reference_values():
    # matplotlib.cm.jet([0, 0.5, 1], bytes=True)[:, :3]
    np.testing.assert_array_equal(
        maps.jet([0.0, 0.5, 1.0]), [[0, 0, 127], [124, 255, 121], [127, 0, 0]]
    )
    out = maps.jet(np.linspace(0, 1, 11))
    assert out.shape == (11, 3) and out.dtype == np.uint8
    assert hue_of(maps.jet([0.0])[0]) == pytest.approx(2 / 3)  # blue at 0


# -- infection map -----------------------------------------------------------------------------


def test_certain_infection_is_red_and_keeps_brightness():
    cxr = np.full((32, 32), 150, np.uint8)
    out = maps.infection_map(cxr, np.ones((32, 32), np.float32))
    pixel = out[10, 10]
    hue = hue_of(pixel)
    assert min(hue, 1 - hue) < 0.02  # red
    assert pixel.max() == 150  # value comes from the CXR


def test_zero_probability_leaves_the_cxr_unchanged():
    rng = np.random.default_rng(0)
    cxr = rng.integers(0, 256, (40, 48), dtype=np.uint8)
    prob = np.zeros((40, 48), np.float32)
    prob[10:20, 10:20] = 0.9
    prob[0, 0] = 0.01  # below epsilon
    out = maps.infection_map(cxr, prob)
    assert out.shape == (40, 48, 3) and out.dtype == np.uint8
    outside = prob < 0.02
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch][outside], cxr[outside])
    inside = out[10:20, 10:20]
    assert (inside[..., 0] != inside[..., 2]).any()  # coloured


def test_rgb_cxr_is_accepted():
    cxr = np.zeros((16, 16, 3), np.uint8)
    cxr[..., 1] = 200
    out = maps.infection_map(cxr, np.zeros((16, 16)))
    np.testing.assert_array_equal(out, cxr)


def test_output_at_cxr_resolution_when_prob_is_smaller():
    cxr = np.full((64, 48), 120, np.uint8)
    prob = np.zeros((32, 32), np.float32)
    prob[:, 16:] = 1.0  # right half infected
    out = maps.infection_map(cxr, prob)
    assert out.shape == (64, 48, 3)
    assert hue_of(out[30, 45]) < 0.02 or hue_of(out[30, 45]) > 0.98
    np.testing.assert_array_equal(out[30, 2], [120, 120, 120])


def test_infection_map_is_vectorised_enough_for_full_resolution():
    cxr = np.random.default_rng(1).integers(0, 256, (1024, 1024), dtype=np.uint8)
    out = maps.infection_map(cxr, np.random.default_rng(2).random((224, 224)))
    assert out.shape == (1024, 1024, 3)


# -- severity ----------------------------------------------------------------------------------


def two_lungs(height: int = 60, width: int = 64) -> np.ndarray:
    lung = np.zeros((height, width), bool)
    lung[10:50, 6:28] = True  # image left = patient's right lung, 880 px
    lung[10:50, 36:60] = True  # image right = patient's left lung, 960 px
    return lung


def test_severity_known_fractions_on_two_lungs():
    lung = two_lungs()
    prob = np.zeros(lung.shape, np.float32)
    prob[10:30, 6:28] = 0.8  # half of the patient's right lung
    prob[10:20, 36:60] = 0.5  # a quarter of the left lung; 0.5 counts
    prob[0:5, 0:5] = 0.9  # outside the lungs: image share only
    sev = maps.severity(prob, lung)
    assert sev.right_lung_fraction == pytest.approx(0.5)
    assert sev.left_lung_fraction == pytest.approx(0.25)
    assert sev.lung_fraction == pytest.approx((440 + 240) / (880 + 960))
    assert sev.infected_fraction == pytest.approx((440 + 240 + 25) / lung.size)
    assert sev.grade == 2 and sev.label == "moderate"
    assert sev.lung_split == "components"


def test_severity_ignores_specks_and_splits_touching_lungs_at_midline():
    lung = two_lungs()
    lung[30:32, 28:36] = True  # a bridge: the lungs now touch
    lung[2, 2] = True  # a speck, not a lung
    prob = np.zeros(lung.shape, np.float32)
    prob[lung] = 1.0
    prob[:, 32:] = 0.0  # image's right half clean
    sev = maps.severity(prob, lung)
    assert sev.lung_split == "midline"
    assert sev.right_lung_fraction == pytest.approx(1.0)
    assert sev.left_lung_fraction == 0.0
    # 880 + 960 lung pixels + a 2 x 8 bridge; infected: the image's left half of all that.
    assert sev.lung_fraction == pytest.approx((880 + 2 * 4) / (880 + 960 + 16))
    assert sev.grade == 2


def test_severity_resizes_prob_to_lung_mask_and_without_mask():
    lung = two_lungs(64, 64)
    sev = maps.severity(np.ones((32, 32)), lung.astype(np.uint8) * 255)
    assert sev.lung_fraction == 1.0 and sev.grade == 4 and sev.label == "critical"
    bare = maps.severity(np.eye(4))
    assert bare.infected_fraction == 0.25 and bare.grade is None and bare.label is None
    with pytest.raises(ValueError):
        maps.severity(np.ones((8, 8)), np.zeros((8, 8)))


@pytest.mark.parametrize(
    ("fraction", "grade"),
    [(0.0, 0), (0.001, 1), (0.2499, 1), (0.25, 2), (0.4999, 2), (0.5, 3), (0.75, 4), (1.0, 4)],
)
def test_grade_bands(fraction: float, grade: int):
    assert maps.grade_for(fraction) == grade
    assert maps.GRADE_LABELS[grade] in ("none", "mild", "moderate", "severe", "critical")


def test_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    mask = rng.random((40, 50)) < 0.45
    labels, sizes = extent._components(mask)
    ref, n = ndimage.label(mask)
    assert labels.max() == n
    assert sorted(sizes[1:].tolist()) == sorted(np.bincount(ref.ravel())[1:].tolist())
    # Same partition: every reference component maps to exactly one of ours.
    pairs = {(a, b) for a, b in zip(labels[mask], ref[mask], strict=True)}
    assert len(pairs) == n


def test_maps_import_neither_tensorflow_nor_django():
    code = (
        "import sys, inference.maps; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'django')]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)
