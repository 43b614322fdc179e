"""fit: checkpoints every epoch, resumes after an interruption (segmentation networks and
classifiers alike), records its provenance.

(That one tiny batch can be overfit is shown in test_losses.py.)
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)
from annotation.phantoms import make_phantom
from training.nets.config import preset
from training.nets.fit import TrainingStopped, fit
from training.nets.provenance import data_version, data_version_of_digests

EPOCHS = 3


def write_pairs(folder: Path, n: int = 4, size: int = 48) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    images, masks = [], []
    for i in range(n):
        ph = make_phantom(i, size=size, covid=i % 2 == 0)
        image, mask = folder / f"cxr{i}.png", folder / f"mask_cxr{i}.png"
        Image.fromarray(ph.image).save(image)
        Image.fromarray(ph.infection.astype(np.uint8) * 255).save(mask)
        images.append(str(image))
        masks.append(str(mask))
    return images, masks


def optimizer_steps(checkpoint_dir: Path) -> int:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(checkpoint_dir))
    key = next(
        k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/") and "iter" in k
    )
    return int(reader.get_tensor(key))


@pytest.fixture(scope="module")
def interrupted_then_resumed(tmp_path_factory):
    """One run stopped during epoch 2 of 3, then resumed: both calls' observations."""
    import tensorflow as tf

    root = tmp_path_factory.mktemp("fit")
    images, masks = write_pairs(root / "data")
    # 4 images in one batch: one optimizer step per epoch.
    config = preset("tiny", epochs=EPOCHS, batch_size=4, input_size=32)
    out = root / "run"
    first_epochs: list[int] = []

    def stop_in_epoch_two(epoch, epochs, step, steps, loss):
        first_epochs.append(epoch)
        return epoch < 2

    with pytest.raises(TrainingStopped):
        fit(config, images, masks, out_dir=out, on_progress=stop_in_epoch_two)
    state_after_stop = json.loads((out / "checkpoint" / "state.json").read_text())
    steps_after_stop = optimizer_steps(out / "checkpoint")

    second_epochs: list[int] = []
    result = fit(
        config,
        images,
        masks,
        out_dir=out,
        resume=True,
        on_progress=lambda epoch, *_: second_epochs.append(epoch) or True,
    )
    tf.keras.backend.clear_session()
    return {
        "config": config,
        "images": images,
        "masks": masks,
        "out": out,
        "first_epochs": first_epochs,
        "state_after_stop": state_after_stop,
        "steps_after_stop": steps_after_stop,
        "second_epochs": second_epochs,
        "result": result,
    }


def test_an_interrupted_run_keeps_its_last_completed_epoch(interrupted_then_resumed):
    r = interrupted_then_resumed
    assert r["first_epochs"] == [1, 2]
    assert r["state_after_stop"]["epoch"] == 1
    assert len(r["state_after_stop"]["loss_history"]) == 1
    assert r["steps_after_stop"] == 1  # the optimizer state of epoch 1, not of the stopped step


def test_resume_continues_from_the_saved_epoch(interrupted_then_resumed):
    r = interrupted_then_resumed
    result = r["result"]
    assert r["second_epochs"] == [2, 3]  # epoch 1 is not trained again
    assert result.initial_epoch == 1
    assert len(result.loss_history) == EPOCHS
    assert result.loss_history[0] == r["state_after_stop"]["loss_history"][0]
    assert all(math.isfinite(v) for v in result.loss_history)
    # Adam's step counter went on from the checkpoint: its moments were restored with it.
    assert optimizer_steps(r["out"] / "checkpoint") == EPOCHS
    assert result.weights_path.is_file()


def test_run_json_records_config_seed_data_and_code_versions(interrupted_then_resumed):
    r = interrupted_then_resumed
    run = json.loads(r["result"].run_path.read_text())
    assert run["config"] == r["config"].to_dict()
    assert run["seed"] == r["config"].seed
    assert run["data_version"] == data_version(r["images"], r["masks"])
    assert isinstance(run["code_version"], str) and run["code_version"]
    assert {"tensorflow", "segmentation_models", "numpy"} <= set(run["versions"])
    assert run["initial_epoch"] == 1
    assert run["loss_history"] == r["result"].loss_history
    assert run["mixed_precision"]["applied"] is False
    # The BatchNorm statistics were recomputed on the one batch of 4 training images.
    assert run["batchnorm"]["layers"] > 100  # DenseNet-121's and the decoder's
    assert run["batchnorm"]["batches"] == 1 and run["batchnorm"]["samples"] == 4
    assert r["result"].run_path.parent == r["result"].weights_path.parent


def test_resume_refuses_a_checkpoint_made_with_other_options_or_data(interrupted_then_resumed):
    r = interrupted_then_resumed
    other = r["config"].replace(learning_rate=0.5)
    with pytest.raises(ValueError, match="learning_rate"):
        fit(other, r["images"], r["masks"], out_dir=r["out"], resume=True)
    with pytest.raises(ValueError, match="other data"):
        fit(r["config"], r["images"][:3], r["masks"][:3], out_dir=r["out"], resume=True)


def test_data_version_is_the_hash_of_the_sorted_file_digests(tmp_path):
    images, masks = write_pairs(tmp_path / "a", n=3)
    digests = sorted(hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in images + masks)
    by_hand = hashlib.sha256("".join(f"{d}\n" for d in digests).encode()).hexdigest()

    version = data_version(images, masks)

    assert version == by_hand
    # A worker that knows the digests (stored with the rows) computes the same value.
    assert data_version_of_digests(reversed(digests)) == version


def test_data_version_follows_file_bytes_not_order_or_folder(tmp_path):
    images, masks = write_pairs(tmp_path / "a", n=3)
    version = data_version(images, masks)
    assert data_version(images[::-1], masks[::-1]) == version

    copies = write_pairs(tmp_path / "b", n=3)
    assert data_version(*copies) == version  # same files elsewhere: same version

    Image.fromarray(np.zeros((48, 48), np.uint8)).save(masks[0])  # a revised mask
    assert data_version(images, masks) != version
    assert data_version(images, [None, *masks[1:]]) != version


def test_a_classifier_fit_resumes_from_its_checkpoint(tmp_path):
    import tensorflow as tf

    from training.nets.predict import load_model

    images, _ = write_pairs(tmp_path / "data")
    labels = [i % 2 == 0 for i in range(len(images))]
    config = preset("tiny", task="classifier", epochs=2, batch_size=4, input_size=32)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped):
        fit(
            config, images, covid_flags=labels, out_dir=out, on_progress=lambda epoch, *_: epoch < 2
        )
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1

    epochs: list[int] = []
    result = fit(
        config,
        images,
        covid_flags=labels,
        out_dir=out,
        resume=True,
        on_progress=lambda epoch, *_: epochs.append(epoch) or True,
    )

    assert epochs == [2]  # epoch 1 came from the checkpoint
    assert result.initial_epoch == 1 and len(result.loss_history) == 2
    assert optimizer_steps(out / "checkpoint") == 2
    run = json.loads(result.run_path.read_text())
    assert run["task"] == "classifier" and run["classes"] == ["control", "covid19"]
    assert run["data_version"] == data_version(images)  # a classifier reads no masks
    model = load_model(config, result.weights_path)
    assert model.output_shape == (None, 2)
    tf.keras.backend.clear_session()


def test_the_paper_classifier_is_ten_epochs_at_1e_5():
    config = preset("paper", task="classifier", encoder="resnet50")
    assert (config.epochs, config.learning_rate, config.input_size) == (10, 1e-5, 224)
    assert config.is_classifier and not preset("paper").is_classifier
