"""Data pipeline: loading, preprocessing, paired augmentation, oversampling, determinism."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from training.nets import data

SIZE = 32


def square_pair(size: int = 48, lo: int = 14, hi: int = 30) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((size, size), np.float32)
    image[lo:hi, lo + 2 : hi + 2] = 1.0
    return image, image.copy()


def collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


# -- preprocess / resize -----------------------------------------------------------------------


def test_preprocess_shape_range_and_channels():
    gray = np.random.default_rng(0).integers(0, 256, (40, 57), dtype=np.uint8)
    x = data.preprocess(gray, SIZE)
    assert x.shape == (SIZE, SIZE, 3)
    assert x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(x[..., 0], x[..., 1])
    np.testing.assert_array_equal(x[..., 0], x[..., 2])


def test_preprocess_keeps_values_when_no_resize_needed():
    gray = np.array([[0, 255], [51, 102]], np.uint8)
    x = data.preprocess(gray, 2)
    np.testing.assert_allclose(x[..., 0], gray / 255.0, atol=1e-7)
    np.testing.assert_allclose(data.preprocess(np.full((50, 70), 255, np.uint8), SIZE), 1.0)


def test_preprocess_of_an_8bit_cxr_is_the_float_resize_within_one_level():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:700, 0:530]
    smooth = ((np.sin(x / 40) + np.cos(y / 55)) * 60 + 128).astype(np.uint8)
    for gray in (smooth, rng.integers(0, 256, (700, 530), dtype=np.uint8)):
        fast = data.preprocess(gray, SIZE)
        exact = data.preprocess(gray.astype(np.float32) / 255.0, SIZE)
        assert np.abs(fast - exact).max() <= 1 / 255 + 1e-6


def test_resize_probability_back_to_image_size():
    prob = np.random.default_rng(1).random((SIZE, SIZE, 1)).astype(np.float32)
    out = data.resize_probability(prob, 50, 70)
    assert out.shape == (50, 70) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(data.resize_probability(np.full((8, 8), 0.7), 20, 30), 0.7, 1e-6)


# -- loading -----------------------------------------------------------------------------------


def test_load_gray_16_bit_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32896], [65535, 65535, 0]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = data.load_gray(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1, 128], [255, 255, 0]])


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "LA", "P", "L"])
def test_load_gray_any_mode(tmp_path: Path, mode: str):
    gray = np.random.default_rng(2).integers(0, 256, (9, 11), dtype=np.uint8)
    im = Image.fromarray(gray).convert(mode)
    if mode == "RGBA":
        im.putalpha(Image.fromarray(np.full((9, 11), 40, np.uint8)))  # alpha is ignored
    path = tmp_path / f"img_{mode}.png"
    im.save(path)
    out = data.load_gray(path)
    assert out.shape == (9, 11) and out.dtype == np.uint8
    tolerance = 8 if mode == "P" else 0  # a palette quantises the grays
    assert np.abs(out.astype(int) - gray).max() <= tolerance


def test_load_gray_jpeg(tmp_path: Path):
    gray = np.tile(np.linspace(0, 255, 16).astype(np.uint8), (16, 1))
    Image.fromarray(gray).convert("RGB").save(tmp_path / "x.jpg", quality=95)
    out = data.load_gray(tmp_path / "x.jpg")
    assert out.shape == (16, 16) and np.abs(out.astype(int) - gray).max() <= 6


@pytest.mark.parametrize(
    ("encoding", "mode"),
    [(1, "L"), (255, "L"), (65535, "I;16"), ("red", "RGB")],
)
def test_load_mask_encodings(tmp_path: Path, encoding: int | str, mode: str):
    fg = np.zeros((12, 10), bool)
    fg[3:8, 2:6] = True
    if encoding == "red":
        rgb = np.zeros((12, 10, 3), np.uint8)
        rgb[fg] = (200, 0, 0)  # luma 60: a luma threshold would lose it
        im = Image.fromarray(rgb)
    else:
        dtype = np.uint16 if mode == "I;16" else np.uint8
        im = Image.fromarray((fg * encoding).astype(dtype))
    im.save(tmp_path / "m.png")
    mask = data.load_mask(tmp_path / "m.png")
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, fg.astype(np.float32))
    small = data.load_mask(tmp_path / "m.png", size=6)
    assert small.shape == (6, 6)
    assert set(np.unique(small)) <= {0.0, 1.0} and small.sum() > 0


# -- augmentation ------------------------------------------------------------------------------


def test_augment_moves_image_and_mask_together():
    image, mask = square_pair()
    moved = 0
    for seed in range(8):
        img_a, msk_a = data.augment_pair(image, mask, seed)
        assert img_a.shape == image.shape and msk_a.shape == mask.shape
        assert set(np.unique(msk_a)) <= {0.0, 1.0}
        # Bilinear image vs nearest mask: they may disagree on the square's rim only.
        disagree = np.count_nonzero((img_a > 0.5) != (msk_a > 0.5))
        assert disagree <= 6, (seed, disagree)
        rows, cols = np.nonzero(msk_a)
        ref_rows, ref_cols = np.nonzero(mask)
        shift = np.hypot(rows.mean() - ref_rows.mean(), cols.mean() - ref_cols.mean())
        # 10 % shift per axis plus a 10 degree turn of an off-centre square.
        assert shift <= 0.1 * 48 * np.sqrt(2) + 2.0
        moved += shift > 0.5
    assert moved >= 6  # it does transform


def test_augment_fills_borders_with_nearest_pixel():
    # A vertical gradient: constant fill would leave zeros in the corners, nearest does not.
    image = np.tile(np.linspace(0.2, 1.0, 40, dtype=np.float32)[:, None], (1, 40))
    img_a, _ = data.augment_pair(image, np.zeros_like(image), np.random.default_rng(5))
    assert img_a.min() >= 0.2 - 1e-6


def test_augment_is_deterministic_in_seed():
    image, mask = square_pair()
    a1, m1 = data.augment_pair(image, mask, 11)
    a2, m2 = data.augment_pair(image, mask, 11)
    a3, _ = data.augment_pair(image, mask, 12)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(m1, m2)
    assert not np.array_equal(a1, a3)


def test_dataset_augmentation_keeps_pairs_aligned():
    image, mask = square_pair(SIZE, 8, 20)
    gray = (image * 255).astype(np.uint8)
    ds = data.make_dataset([gray] * 6, [mask] * 6, size=SIZE, batch_size=3, augment=True, seed=3)
    x, y = collect(ds)
    assert x.shape == (6, SIZE, SIZE, 3) and y.shape == (6, SIZE, SIZE, 1)
    assert set(np.unique(y)) <= {0.0, 1.0}
    for xi, yi in zip(x, y, strict=True):
        assert np.count_nonzero((xi[..., 0] > 0.5) != (yi[..., 0] > 0.5)) <= 6
    assert len({yi.tobytes() for yi in y}) > 1  # each sample got its own transform


# -- make_dataset ------------------------------------------------------------------------------


def synthetic(n_covid: int, n_control: int) -> tuple[list[np.ndarray], list, list[bool]]:
    rng = np.random.default_rng(0)
    images, masks, flags = [], [], []
    for i in range(n_covid + n_control):
        images.append(rng.integers(0, 256, (40, 44), dtype=np.uint8))
        covid = i < n_covid
        m = np.zeros((40, 44), np.uint8)
        if covid:
            m[10:30, 8:20] = 255
        masks.append(m if covid or i % 2 else None)  # None is an empty mask too
        flags.append(covid)
    return images, masks, flags


@pytest.mark.parametrize("augment", [True, False])
def test_oversampling_brings_covid_up_to_control_count(augment: bool):
    images, masks, flags = synthetic(n_covid=2, n_control=7)
    ds = data.make_dataset(
        images, masks, size=SIZE, batch_size=4, augment=augment, seed=0, covid_flags=flags
    )
    assert int(ds.cardinality()) == 4  # 14 samples in batches of 4
    _, y = collect(ds)
    n_covid = int((y.reshape(len(y), -1).max(axis=1) > 0).sum())
    assert len(y) == 14 and n_covid == 7


def test_no_oversampling_when_covid_is_the_majority():
    images, masks, flags = synthetic(n_covid=5, n_control=3)
    ds = data.make_dataset(
        images, masks, size=SIZE, batch_size=8, augment=True, seed=0, covid_flags=flags
    )
    x, _ = collect(ds)
    assert len(x) == 8


def test_unshuffled_unaugmented_dataset_is_the_preprocessed_input():
    images, masks, _ = synthetic(n_covid=2, n_control=2)
    ds = data.make_dataset(
        images, masks, size=SIZE, batch_size=3, augment=False, seed=0, shuffle=False
    )
    x, y = collect(ds)
    np.testing.assert_array_equal(x[1], data.preprocess(images[1], SIZE))
    assert y[2].sum() == 0 and y[3].sum() == 0 and y[0].sum() > 0


def test_dataset_is_deterministic_given_seed():
    images, masks, flags = synthetic(n_covid=2, n_control=5)

    def build(seed: int):
        return data.make_dataset(
            images, masks, size=SIZE, batch_size=4, augment=True, seed=seed, covid_flags=flags
        )

    ds_a, ds_b = build(7), build(7)
    epoch1_a, epoch2_a = collect(ds_a), collect(ds_a)
    epoch1_b, epoch2_b = collect(ds_b), collect(ds_b)
    np.testing.assert_array_equal(epoch1_a[0], epoch1_b[0])
    np.testing.assert_array_equal(epoch1_a[1], epoch1_b[1])
    np.testing.assert_array_equal(epoch2_a[0], epoch2_b[0])
    assert not np.array_equal(epoch1_a[0], epoch2_a[0])  # a new order / transforms per epoch
    assert not np.array_equal(collect(build(8))[0], epoch1_a[0])


def test_dataset_from_files(tmp_path: Path):
    paths, mask_paths = [], []
    for i in range(3):
        gray = np.full((36, 30), 40 * i, np.uint8)
        Image.fromarray(gray).save(tmp_path / f"{i}.png")
        m = np.zeros((36, 30), np.uint8)
        m[5:20, 5:15] = 255 if i == 0 else 0
        Image.fromarray(m).save(tmp_path / f"mask_{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        mask_paths.append(tmp_path / f"mask_{i}.png")
    ds = data.make_dataset(
        paths, mask_paths, size=SIZE, batch_size=2, augment=False, seed=0, shuffle=False
    )
    x, y = collect(ds)
    np.testing.assert_allclose(x[2], 80 / 255, atol=1e-6)
    assert y[0].sum() > 0 and y[1].sum() == 0


def test_make_dataset_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        data.make_dataset(
            [np.zeros((4, 4), np.uint8)], [], size=4, batch_size=1, augment=False, seed=0
        )
    with pytest.raises(ValueError):
        data.make_dataset(
            [np.zeros((4, 4), np.uint8)],
            [None],
            size=4,
            batch_size=1,
            augment=False,
            seed=0,
            covid_flags=[True, False],
        )


def test_ml_core_is_django_free():
    code = (
        "import sys, training.nets.data, training.nets.folds, training.nets.metrics; "
        "assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)"
    )
    root = Path(__file__).resolve().parents[3]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
