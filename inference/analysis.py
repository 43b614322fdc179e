"""Infection maps of one CXR on demand: decode an upload, run the final networks, draw the maps.

The Django side of `inference.maps` for the viewer and the demo: model versions become loaded
networks (kept in a small per-process cache so a page view does not rebuild them), an upload
becomes an 8-bit gray array (inference/uploads.py), and the probability map becomes the
infection map, the detection, the severity and, with a classifier, the Grad-CAM map (paper
Sec. II-D and III-C).

Nothing here writes to the database or to storage: a demo upload is analysed and forgotten.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image as PILImage

from annotation import storage
from annotation.errors import Conflict
from annotation.models import Image
from inference import maps
from inference.uploads import decode_upload, upload_limits
from training.models import ModelVersion
from training.validation import ensemble_verdict, run_card

__all__ = [
    "Analysis",
    "NoFinalModelsError",
    "analyse",
    "analysis_payload",
    "decode_upload",
    "upload_limits",
    "final_ensemble",
    "image_analyse",
    "image_starting_mask",
    "model_cache_clear",
    "png_data_url",
]

# --------------------------------------------------------------------------------------------
# Loaded networks, cached per process
# --------------------------------------------------------------------------------------------

CACHE_SIZE = 8  # DenseNet-121 U-Nets at 224 px are ~50 MB each; a final ensemble fits.


class _ModelCache:
    """A small LRU of built Keras models, keyed by weights path and config.

    Weights files are never overwritten (storage names are unique), so the path identifies the
    trained network. Building happens under a lock so two requests never build the same model.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = build()
            self._models[key] = model
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return model

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


_cache = _ModelCache(CACHE_SIZE)

# Keras builds models (and Grad-CAM its gradient model) in process-global state; two threads of
# a threaded server doing it at once crash TensorFlow. One CPU inference at a time loses little:
# TensorFlow already spreads each one over every core.
_NETWORKS_LOCK = threading.Lock()


def model_cache_clear() -> None:
    """Forgets every loaded network (tests; or after weights were replaced by hand)."""
    _cache.clear()


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # Configs saved by newer code may carry more keys; the network is defined by these.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (data or {}).items() if k in names}


def _weights_file(mv: ModelVersion) -> str:
    try:
        return str(storage.local_copy(mv.weights.name))
    except FileNotFoundError:
        raise Conflict(
            f"the weights of model v{mv.pk} ({mv.weights.name}) are missing from storage"
        ) from None


def _segmentation_model(mv: ModelVersion) -> tuple[Any, int]:
    from training.nets.config import TrainConfig
    from training.nets.predict import load_model

    config = TrainConfig(
        **{"arch": mv.arch, "encoder": mv.encoder, **_known_fields(TrainConfig, mv.config)}
    )
    path = _weights_file(mv)
    model = _cache.get(("seg", path), lambda: load_model(config, path))
    return model, config.input_size


def _classifier_model(mv: ModelVersion) -> Any:
    from training.nets.classifier import load_classifier
    from training.nets.config import TrainConfig

    config = TrainConfig(
        **{"encoder": mv.encoder, **_known_fields(TrainConfig, mv.config), "task": "classifier"}
    )
    path = _weights_file(mv)
    return _cache.get(("cls", path), lambda: load_classifier(config, path))


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """What the networks say about one CXR.

    Attributes:
        gray: the CXR, uint8 (H, W).
        prob: float32 (H, W) ensemble mean probability at the image's own resolution.
        map: uint8 (H, W, 3) infection map (jet hue and saturation over the CXR's value).
        detected: COVID-19 by the paper's rule, some pixel of `prob` >= 0.5.
        max_probability: the largest pixel probability.
        severity: infected share of the image, and per lung with a lung mask.
        gradcam: float32 (H, W) Grad-CAM of the COVID-19 class in [0, 1], or None.
        gradcam_map: uint8 (H, W, 3) Grad-CAM drawn like the infection map, or None.
        models: the segmentation model versions of the ensemble.
        classifier: the classifier behind `gradcam`, or None.
        lung_mask: the binary (H, W) lung mask used for severity (and the lung-only map), or
            None.
    """

    gray: np.ndarray
    prob: np.ndarray
    map: np.ndarray
    detected: bool
    max_probability: float
    severity: maps.Severity
    gradcam: np.ndarray | None
    gradcam_map: np.ndarray | None
    models: tuple[ModelVersion, ...]
    classifier: ModelVersion | None = None
    lung_mask: np.ndarray | None = None


def analyse(
    gray: np.ndarray,
    models: Sequence[ModelVersion],
    *,
    lung_mask: np.ndarray | None = None,
    classifier: ModelVersion | None = None,
) -> Analysis:
    """Runs the ensemble of segmentation networks (and a classifier) on one CXR.

    Args:
        gray: uint8 (H, W) CXR at its own resolution.
        models: segmentation model versions; their probability maps are averaged.
        lung_mask: optional binary (H, W) lung mask for per-lung severity; an empty one is
            ignored.
        classifier: optional classification model version for the Grad-CAM map.

    Returns:
        An `Analysis`.

    Raises:
        ValueError: no models, or `gray` is not a 2-D uint8 image.
    """
    from training.nets.predict import predict_probabilities

    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W) image, got {gray.dtype} {gray.shape}")
    if not models:
        raise ValueError("no trained networks to analyse the image with")

    cam = None
    with _NETWORKS_LOCK:
        probs = []
        for mv in models:
            model, size = _segmentation_model(mv)
            probs.append(next(iter(predict_probabilities(model, [gray], size=size))))
        if classifier is not None:
            from inference.maps.gradcam import grad_cam

            cam = grad_cam(_classifier_model(classifier), gray, class_index=1)
    prob = maps.ensemble(probs)

    lungs = None
    if lung_mask is not None and np.asarray(lung_mask).any():
        lungs = lung_mask
    sev = maps.severity(prob, lungs)
    cam_map = maps.infection_map(gray, cam) if cam is not None else None

    return Analysis(
        gray=gray,
        prob=prob,
        map=maps.infection_map(gray, prob),
        detected=maps.detect(prob),
        max_probability=float(prob.max(initial=0.0)),
        severity=sev,
        gradcam=cam,
        gradcam_map=cam_map,
        models=tuple(models),
        classifier=classifier,
        lung_mask=None if lungs is None else np.asarray(lungs) > 0,
    )


class NoFinalModelsError(Conflict):
    """No final round has finished yet, so there are no networks to draw maps with."""

    def __init__(self) -> None:
        super().__init__(
            "No infection-map networks have been trained yet: an admin trains them in a final "
            "round on the accepted masks."
        )


def final_ensemble() -> tuple[list[ModelVersion], ModelVersion | None]:
    """The newest final round's segmentation networks, and the classifier for the first one's
    encoder (None if that was not trained).

    Raises:
        NoFinalModelsError: no final round has finished.
    """
    from inference import services

    models = list(services.final_model_versions())
    if not models:
        raise NoFinalModelsError()
    classifier = services.final_classifiers().get(models[0].encoder)
    return models, classifier


def image_analyse(image: Image) -> Analysis:
    """Analyses a stored image (its display copy) with the final networks.

    Uses the image's lung mask, when it has one, for per-lung severity.

    Raises:
        NoFinalModelsError: no final round has finished.
    """
    from annotation.imaging import read_mask_png
    from training.nets.data import load_gray

    models, classifier = final_ensemble()
    gray = load_gray(storage.local_copy(image.display.name))
    lungs = read_mask_png(storage.read(image.lung_mask.name)) if image.lung_mask else None
    if lungs is not None and lungs.shape != gray.shape:
        lungs = None  # a lung mask must match its image; never stretch one onto another
    return analyse(gray, models, lung_mask=lungs, classifier=classifier)


def png_data_url(image: np.ndarray) -> str:
    """A `data:image/png;base64,...` URL of a uint8 (H, W) gray or (H, W, 3) RGB array."""
    a = np.ascontiguousarray(image, dtype=np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    buf = io.BytesIO()
    PILImage.fromarray(a).save(buf, format="PNG", compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def severity_dict(sev: maps.Severity) -> dict[str, Any]:
    """A `Severity` as JSON: NaN shares (an empty lung side) become null."""

    def share(x: float | None) -> float | None:
        return None if x is None or x != x else float(x)

    return {
        "infected_fraction": share(sev.infected_fraction),
        "lung_fraction": share(sev.lung_fraction),
        "right_lung_fraction": share(sev.right_lung_fraction),
        "left_lung_fraction": share(sev.left_lung_fraction),
        "grade": sev.grade,
        "label": sev.label,
        "lung_split": sev.lung_split,
    }


def model_dict(mv: ModelVersion) -> dict[str, Any]:
    """A model version as the viewer describes it, with its card (training.validation)."""
    return {
        "id": mv.pk,
        "arch": mv.arch,
        "encoder": mv.encoder,
        "input_size": (mv.config or {}).get("input_size"),
        "round": mv.run.round.number,
        "card": run_card(mv.run, mv),
    }


def _fit(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """A copy no larger than `max_side` on its long side (Lanczos), for display only."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(PILImage.fromarray(image).resize(size, PILImage.Resampling.LANCZOS))


def analysis_payload(result: Analysis, *, max_side: int | None = None) -> dict[str, Any]:
    """The JSON the viewer and the demo show.

    Detection and severity are always measured at the image's own resolution; the CXR and the
    maps are PNG data URLs at that resolution too, or no larger than `max_side` on their long
    side when it is given (a 3000-px radiograph's three maps would be tens of megabytes).
    """
    h, w = result.gray.shape
    cam = result.gradcam_map
    models = [model_dict(mv) for mv in result.models]
    lungs_only = None
    if result.lung_mask is not None:
        lungs_only = maps.infection_map(result.gray, np.where(result.lung_mask, result.prob, 0.0))
    return {
        "width": int(w),
        "height": int(h),
        "detected": result.detected,
        "validation": ensemble_verdict([m["card"] for m in models]),
        "threshold": maps.THRESHOLD,
        "epsilon": maps.EPSILON,
        "max_probability": result.max_probability,
        "severity": severity_dict(result.severity),
        "cxr": png_data_url(_fit(result.gray, max_side)),
        "map": png_data_url(_fit(result.map, max_side)),
        "map_lungs": png_data_url(_fit(lungs_only, max_side)) if lungs_only is not None else None,
        "gradcam": png_data_url(_fit(cam, max_side)) if cam is not None else None,
        "models": models,
        "classifier": model_dict(result.classifier) if result.classifier is not None else None,
    }


def image_starting_mask(image: Image, mv: ModelVersion) -> np.ndarray:
    """One network's binary mask of a stored image at the image's own size: the paper's
    threshold (0.5) on its probability, resized back as the round's predictions are
    (training.nets.predict.predicted_mask). A starting point for an MD's first drawing."""
    from training.nets.data import load_gray, preprocess
    from training.nets.detection import THRESHOLD
    from training.nets.predict import predicted_mask

    gray = load_gray(storage.local_copy(image.display.name))
    with _NETWORKS_LOCK:
        model, size = _segmentation_model(mv)
        prob = model(preprocess(gray, size)[None], training=False).numpy()[0, ..., 0]
    return predicted_mask(prob, image.height, image.width, THRESHOLD)
