"""Self-supervised pretraining (masked-image modelling): the masks, the objective, the encoder
file and how a segmentation network loads it by layer name; and the lung post-filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from annotation.phantoms import make_phantom
from training.nets.builders import build_model, encoder_of
from training.nets.config import PretrainConfig, preset, pretrain_preset
from training.nets.fit import initial_model
from training.nets.lungs import APPLIED, NO_LUNG_MASK, SIZE_MISMATCH, lung_filter
from training.nets.pretrain import (
    ATTRIBUTE,
    encoder_file_record,
    load_encoder_weights,
    masked_l1,
    patch_masks,
    pretrain,
)

STEPS = 18  # 12 images in batches of 4 for 6 epochs: 18 steps


def write_phantoms(folder: Path, n: int = 12, size: int = 64) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"cxr{i}.png"
        Image.fromarray(make_phantom(100 + i, size=size, covid=i % 3 == 0).image).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """One tiny pretraining shared by the tests below (its first epoch costs graph tracing)."""
    folder = tmp_path_factory.mktemp("pretrain")
    images = write_phantoms(folder / "images")
    config = pretrain_preset("tiny", batch_size=4, epochs=6, seed=3)
    return config, pretrain(config, images, out_dir=folder / "out")


def test_patch_masks_hide_exactly_the_ratio_and_repeat_per_seed() -> None:
    a = patch_masks(np.random.default_rng(7), 5, 32, 4, 0.6)
    b = patch_masks(np.random.default_rng(7), 5, 32, 4, 0.6)
    c = patch_masks(np.random.default_rng(8), 5, 32, 4, 0.6)
    assert a.shape == (5, 32, 32, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # 38 of 64 patches (round(0.6 × 64)), each 4 × 4 px, in every image.
    assert a.reshape(5, -1).sum(axis=1).tolist() == [38 * 16] * 5
    # Patches are masked whole: each 4 × 4 block is all 0 or all 1.
    blocks = a[0, :, :, 0].reshape(8, 4, 8, 4).transpose(0, 2, 1, 3).reshape(64, 16)
    assert set(blocks.min(axis=1) == blocks.max(axis=1)) == {True}


def test_the_loss_counts_masked_pixels_only() -> None:
    target = tf.zeros((1, 4, 4, 1))
    recon = tf.concat([tf.fill((1, 4, 2, 1), 0.5), tf.fill((1, 4, 2, 1), 9.0)], axis=2)
    mask = tf.concat([tf.ones((1, 4, 2, 1)), tf.zeros((1, 4, 2, 1))], axis=2)
    # The 8 masked pixels are each 0.5 off; the visible ones (9.0 off) cost nothing.
    assert float(masked_l1(target, recon, mask)) == pytest.approx(0.5, abs=1e-6)


def test_the_config_refuses_patches_that_do_not_tile_the_input() -> None:
    with pytest.raises(ValueError, match="must divide input_size"):
        PretrainConfig(input_size=32, mask_patch=5)


def test_the_objective_decreases_on_a_fixed_seed(pretrained) -> None:
    config, result = pretrained
    losses = result.step_losses
    assert len(losses) == STEPS
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.85 * first, losses
    assert result.loss_history[-1] < result.loss_history[0]


def test_the_encoder_file_records_how_it_was_made(pretrained) -> None:
    config, result = pretrained
    record = encoder_file_record(result.encoder_path)
    assert record["method"] == "simmim"
    assert record["config"] == config.to_dict()
    assert record["n_images"] == 12
    assert ATTRIBUTE and result.layers > 100  # DenseNet-121: 241 layers with weights


def test_a_network_starts_from_the_pretrained_encoder_layer_by_layer(pretrained) -> None:
    config, result = pretrained
    tf.keras.backend.clear_session()  # as fit does before building: the same layer names
    run_config = preset("tiny", arch="unetpp", encoder_weights=str(result.encoder_path))
    model, report = initial_model(run_config)
    assert report is not None
    assert report["matched"] == report["layers"] == result.layers
    with __import__("h5py").File(result.encoder_path, "r") as f:
        layer_names = {n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]}
    fresh = build_model("unetpp", "densenet121", input_size=32)
    differ = 0
    for layer, fresh_layer in zip(encoder_of(model).layers, encoder_of(fresh).layers, strict=True):
        if not layer.weights:
            continue
        assert layer.name in layer_names
        from training.nets.pretrain import _file_layers

        stored = _file_layers(str(result.encoder_path))[layer.name]
        for got, want in zip(layer.get_weights(), stored, strict=True):
            np.testing.assert_array_equal(got, want)
        if any(
            not np.array_equal(a, b)
            for a, b in zip(layer.get_weights(), fresh_layer.get_weights(), strict=True)
        ):
            differ += 1
    assert differ > 0.9 * result.layers  # a fresh init differs (BN moving stats may not)


def test_an_encoder_file_of_another_encoder_is_refused(pretrained) -> None:
    _, result = pretrained
    model = build_model("unet", "resnet50", input_size=32)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"none of the \d+ encoder layers .* another encoder"):
        load_encoder_weights(model, result.encoder_path)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_a_missing_encoder_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="encoder weights file not found"):
        load_encoder_weights(build_model("unet", input_size=32), tmp_path / "gone.h5")


# ----------------------------------------------------------------------------- the lung filter


def test_the_lung_filter_zeroes_pixels_outside_the_dilated_lungs() -> None:
    mask = np.ones((100, 100), dtype=bool)
    lungs = np.zeros((100, 100), dtype=bool)
    lungs[40:60, 40:60] = True
    out, what = lung_filter(mask, lungs, margin_percent=5.0)  # 5 px at 100 px
    assert what == APPLIED
    assert out[40:60, 40:60].all()  # inside: kept
    assert out[35, 50] and not out[34, 50]  # 5 px margin, not 6
    assert not out[:30].any() and not out[:, 70:].any()
    exact, _ = lung_filter(mask, lungs, margin_percent=0)
    np.testing.assert_array_equal(exact, lungs)


def test_without_a_lung_mask_the_candidate_is_unchanged() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:20, 5:45] = True
    out, what = lung_filter(mask, None)
    assert what == NO_LUNG_MASK
    np.testing.assert_array_equal(out, mask)
    out, what = lung_filter(mask, np.ones((25, 25), dtype=bool))
    assert what == SIZE_MISMATCH
    np.testing.assert_array_equal(out, mask)
