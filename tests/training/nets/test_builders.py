"""Model builders: Table VIII parameter counts for all 24 configurations, shapes, weights files."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import training.nets  # noqa: F401  (sets SM_FRAMEWORK / TF_USE_LEGACY_KERAS before tf.keras loads)
from training.nets.builders import WeightsUnavailableError, build_model
from training.nets.config import ARCHITECTURES, ENCODERS

K = 1e3
M = 1e6

# (arch, encoder backbone, frozen) -> (trainable, non-trainable) at 224×224×3, one sigmoid class.
# CheXNet has DenseNet-121's graph, so it shares the densenet121 rows (as in Table VIII).
# Sources:
#   [T8] QaTa-COV19 paper, Table VIII (shared/reference/qata-cov19-infection-maps-paper.txt),
#        as rounded there.
#   [SN] shared/STACK_NOTES.md: segmentation_models' Unet measured exactly; equal to [T8]'s
#        U-Net rows (5.19 M / 6.96 M, 12.06 M / 85.63 K, ...).
#   [D]  derived: freezing moves the encoder's non-BN weights from trainable to non-trainable and
#        leaves the total unchanged. STACK_NOTES lacks these four rows; Table VIII prints the same
#        values, which satisfy the check: UNet++ Inception-v3 30.43 M + 39.23 K = 30.47 M =
#        8.68 M + 21.79 M; UNet++ ResNet-50 34.34 M + 50.37 K = 34.39 M = 10.88 M + 23.51 M;
#        DLA Inception-v3 28.96 M + 39.23 K = 29.00 M = 7.20 M + 21.79 M (rounding);
#        DLA ResNet-50 32.2 M + 50.37 K = 32.25 M = 8.74 M + 23.51 M. (The frozen trainable
#        part is the decoder plus the encoder's BatchNorm offsets/scales, which stay trainable.)
TABLE_VIII: dict[tuple[str, str, bool], tuple[float, float, str]] = {
    ("unet", "densenet121", False): (12_059_345, 85_632, "SN"),
    ("unet", "densenet121", True): (5_189_137, 6_955_840, "SN"),
    ("unet", "inceptionv3", False): (29_896_689, 36_416, "SN"),
    ("unet", "inceptionv3", True): (8_145_553, 21_787_552, "SN"),
    ("unet", "resnet50", False): (32_513_556, 47_558, "SN"),
    ("unet", "resnet50", True): (9_058_644, 23_502_470, "SN"),
    ("unetpp", "densenet121", False): (14.40 * M, 88.45 * K, "T8"),
    ("unetpp", "densenet121", True): (7.53 * M, 6.96 * M, "T8"),
    ("unetpp", "inceptionv3", False): (30.43 * M, 39.23 * K, "T8"),
    ("unetpp", "inceptionv3", True): (8.68 * M, 21.79 * M, "D"),
    ("unetpp", "resnet50", False): (34.34 * M, 50.37 * K, "T8"),
    ("unetpp", "resnet50", True): (10.88 * M, 23.51 * M, "D"),
    ("dla", "densenet121", False): (13.15 * M, 88.45 * K, "T8"),
    ("dla", "densenet121", True): (6.27 * M, 6.96 * M, "T8"),
    ("dla", "inceptionv3", False): (28.96 * M, 39.23 * K, "T8"),
    ("dla", "inceptionv3", True): (7.20 * M, 21.79 * M, "D"),
    ("dla", "resnet50", False): (32.2 * M, 50.37 * K, "T8"),
    ("dla", "resnet50", True): (8.74 * M, 23.51 * M, "D"),
}
TOLERANCE = 0.02
BACKBONE = {"densenet121": "densenet121", "chexnet": "densenet121"}

CONFIGS = [
    pytest.param(arch, encoder, frozen, id=f"{arch}-{encoder}-{'frozen' if frozen else 'trained'}")
    for arch in ARCHITECTURES
    for encoder in ENCODERS
    for frozen in (False, True)
]


@pytest.fixture(autouse=True)
def fresh_keras_session() -> Iterator[None]:
    """Each test starts from an empty Keras session and frees its models afterwards."""
    tf.keras.backend.clear_session()
    yield
    tf.keras.backend.clear_session()


def _count(variables: list[tf.Variable]) -> int:
    return int(sum(np.prod(v.shape) for v in variables))


def _images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).random((n, size, size, 3), dtype=np.float32)


def _encoder_weights(model: tf.keras.Model) -> list[np.ndarray]:
    """Weights of the layers between the input and the bottleneck, in backbone order."""
    ups = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.UpSampling2D)]
    bottleneck = min(ups, key=lambda layer: layer.input.shape[1]).input
    return tf.keras.Model(model.input, bottleneck).get_weights()


def _same_arrays(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("arch", "encoder", "frozen"), CONFIGS)
def test_parameter_counts_match_table_viii(arch: str, encoder: str, frozen: bool) -> None:
    want_trainable, want_frozen, _source = TABLE_VIII[
        (arch, BACKBONE.get(encoder, encoder), frozen)
    ]

    model = build_model(arch, encoder, freeze_encoder=frozen, input_size=224)

    assert model.input_shape == (None, 224, 224, 3)
    assert model.output_shape == (None, 224, 224, 1)
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    assert trainable == pytest.approx(want_trainable, rel=TOLERANCE)
    assert non_trainable == pytest.approx(want_frozen, rel=TOLERANCE)


def test_table_rows_keep_the_total_when_frozen() -> None:
    """The table itself: freezing moves parameters between columns, never adds or drops any."""
    for (arch, encoder, frozen), (trainable, non_trainable, _) in TABLE_VIII.items():
        if frozen:
            free_trainable, free_non_trainable, _ = TABLE_VIII[(arch, encoder, False)]
            total = free_trainable + free_non_trainable
            # Table VIII rounds to 0.01 M: compare at that resolution.
            assert trainable + non_trainable == pytest.approx(total, abs=0.02 * M)


def test_dla_runs_at_64_pixels() -> None:
    model = build_model("dla", "densenet121", input_size=64)

    out = model.predict(_images(64), verbose=0)

    assert model.input_shape == (None, 64, 64, 3)
    assert out.shape == (2, 64, 64, 1)
    assert np.all((out >= 0) & (out <= 1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"arch": "segnet"}, "unet, unetpp, dla"),
        ({"encoder": "vgg16"}, "densenet121, chexnet, inceptionv3, resnet50"),
        ({"input_size": 100}, "multiple of 32"),
        ({"encoder": "inceptionv3", "input_size": 64}, "inceptionv3 needs input_size >= 96"),
        ({"encoder": "chexnet", "weights": "imagenet"}, "ChestX-ray14 weights file"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)  # type: ignore[arg-type]


def test_missing_weights_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        build_model(weights=str(missing))


def _internet_reachable() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
    except OSError:
        return False
    return True


def test_offline_imagenet_weights_point_to_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty Keras cache forces a download attempt.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    if _internet_reachable():
        # Online machines must not download 90 MB here: raise what keras' get_file raises offline.
        def offline_get_file(fname: str, origin: str, *args: object, **kwargs: object) -> str:
            raise Exception(f"URL fetch failure on {origin}: None -- Name or service not known")

        monkeypatch.setattr(tf.keras.utils, "get_file", offline_get_file)

    with pytest.raises(WeightsUnavailableError, match=r"local weights file.*weights=") as info:
        build_model("unet", "resnet50", input_size=64, weights="imagenet")

    assert "no internet" in str(info.value)
    assert "URL fetch failure" in str(info.value.__cause__)


@pytest.mark.parametrize("suffix", [".h5", ".weights.h5"])
def test_whole_model_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    source = build_model("unetpp", "resnet50", freeze_encoder=True, input_size=64)
    path = tmp_path / f"model{suffix}"
    source.save_weights(str(path))

    loaded = build_model("unetpp", "resnet50", freeze_encoder=True, input_size=64, weights=path)

    assert _same_arrays(loaded.get_weights(), source.get_weights())
    x = _images(64)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), source.predict(x, verbose=0))
    # A file from another architecture is refused rather than half loaded.
    with pytest.raises(ValueError, match="fits neither a dla/resnet50 model"):
        build_model("dla", "resnet50", input_size=64, weights=path)


def test_encoder_weights_file_round_trip(tmp_path: Path) -> None:
    """A Keras Applications "notop" file (here with random weights) fills the encoder."""
    backbone = tf.keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(64, 64, 3)
    )
    path = tmp_path / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    backbone.save_weights(str(path))

    model = build_model("unet", "densenet121", input_size=64, weights=path)

    assert _same_arrays(_encoder_weights(model), backbone.get_weights())


def test_chexnet_file_with_classifier_head_loads_by_name(tmp_path: Path) -> None:
    """CheXNet files are DenseNet-121 plus a 14-way ChestX-ray14 head: the head is skipped."""
    densenet = tf.keras.applications.DenseNet121(
        include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg"
    )
    head = tf.keras.layers.Dense(14, activation="sigmoid", name="predictions")(densenet.output)
    chexnet = tf.keras.Model(densenet.input, head)
    path = tmp_path / "chexnet.h5"
    chexnet.save_weights(str(path))

    model = build_model("dla", "chexnet", input_size=64, weights=path)

    assert _same_arrays(_encoder_weights(model), densenet.get_weights())
    # The same file does not fit a ResNet-50 encoder.
    with pytest.raises(ValueError, match="fits neither"):
        build_model("unet", "resnet50", input_size=64, weights=path)
