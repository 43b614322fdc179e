"""Grad-CAM (paper eqs. 14-15) on the encoders' classification counterparts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import training.nets  # noqa: F401  (sets the environment before TensorFlow loads)

ROOT = Path(__file__).resolve().parents[3]
SIZE = 64  # DenseNet-121 features are then 2×2: small, but not a single constant cell


@pytest.fixture(scope="module")
def classifier():
    import tensorflow as tf

    from training.nets.classifier import build_classifier

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = build_classifier("densenet121", input_size=SIZE)
    yield model
    tf.keras.backend.clear_session()


@pytest.fixture(scope="module")
def cxr() -> np.ndarray:
    from annotation.phantoms import make_phantom

    return make_phantom(5, size=96).image[:, 8:88]  # 96 × 80: not square, not SIZE


def test_classifier_output_is_a_two_way_softmax(classifier):
    x = np.random.default_rng(0).random((3, SIZE, SIZE, 3), dtype=np.float32)

    probs = classifier(x, training=False).numpy()

    assert classifier.output_shape == (None, 2)
    assert probs.shape == (3, 2)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert classifier.layers[-1].name == "softmax"
    assert classifier.get_layer("logits").units == 2


def test_grad_cam_has_the_image_size_and_lies_in_unit_range(classifier, cxr):
    from inference.maps.gradcam import grad_cam

    for class_index in (0, 1):
        cam = grad_cam(classifier, cxr, class_index=class_index)

        assert cam.shape == cxr.shape
        assert cam.dtype == np.float32
        assert cam.min() >= 0.0
        assert cam.max() <= 1.0


def test_grad_cam_follows_eqs_14_and_15(classifier, cxr):
    """Logits m = W·GAP(A) + b, so dm_c/dA^k_ij = W[k, c] / Z and alpha_k = W[k, c] / Z."""
    import tensorflow as tf

    from inference.maps.gradcam import grad_cam, last_conv_layer
    from training.nets.data import preprocess

    dense = classifier.get_layer("logits")
    kernel, bias = dense.get_weights()
    rng = np.random.default_rng(1)
    # Mostly positive weights for class 1 so that the ReLU leaves a non-trivial map.
    kernel[:, 1] = rng.random(kernel.shape[0]) - 0.2
    dense.set_weights([kernel, bias])

    cam = grad_cam(classifier, cxr, class_index=1)

    layer = last_conv_layer(classifier)
    features_model = tf.keras.Model(classifier.input, classifier.get_layer(layer).output)
    features = features_model(preprocess(cxr, SIZE)[None], training=False).numpy()[0]
    h, w, _ = features.shape
    alpha = kernel[:, 1] / (h * w)  # eq. 14
    expected = np.maximum(np.tensordot(features, alpha, axes=([2], [0])), 0.0)  # eq. 15
    expected = np.asarray(
        Image.fromarray(expected.astype(np.float32)).resize(
            (cxr.shape[1], cxr.shape[0]), Image.Resampling.BILINEAR
        )
    )
    expected = np.maximum(expected, 0) / expected.max()

    assert cam.max() == pytest.approx(1.0)
    np.testing.assert_allclose(cam, expected, atol=1e-4)


def test_grad_cam_accepts_a_preprocessed_input_and_rejects_unknown_classes(classifier):
    from inference.maps.gradcam import grad_cam

    x = np.random.default_rng(2).random((SIZE, SIZE, 3), dtype=np.float32)

    assert grad_cam(classifier, x).shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="class_index"):
        grad_cam(classifier, x, class_index=2)


def test_importing_the_maps_stays_free_of_tensorflow():
    code = (
        "import sys, inference.maps, inference.maps.gradcam\nprint('tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


def test_classifier_data_carry_one_hot_labels_with_covid_oversampled(tmp_path):
    from annotation.phantoms import make_phantom
    from training.nets.classifier import label_dataset
    from training.nets.config import TrainConfig

    paths, labels = [], []
    for i, covid in enumerate([True, False, False, False]):
        path = tmp_path / f"cxr{i}.png"
        Image.fromarray(make_phantom(i, size=48, covid=covid).image).save(path)
        paths.append(str(path))
        labels.append(int(covid))
    config = TrainConfig(task="classifier", input_size=32, batch_size=16, epochs=1)

    ((x, y),) = list(label_dataset(paths, labels, config))

    assert x.shape == (6, 32, 32, 3)  # 1 COVID-19 + 2 augmented copies, 3 controls
    assert y.shape == (6, 2)
    np.testing.assert_array_equal(y.numpy().sum(axis=1), 1.0)
    assert int(y.numpy()[:, 1].sum()) == 3
