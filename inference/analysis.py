"""Infection maps of one CXR on demand: decode an upload, run the final networks, draw the maps.

The Django side of `inference.maps` for the viewer and the demo: model versions become loaded
networks (kept in a small per-process cache so a page view does not rebuild them), an upload
becomes an 8-bit gray array, and the probability map becomes the infection map, the detection,
the severity and, with a classifier, the Grad-CAM map (paper Sec. II-D and III-C).

Nothing here writes to the database or to storage: a demo upload is analysed and forgotten.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from PIL import Image as PILImage

from annotation import storage
from annotation.errors import Conflict
from annotation.imaging import MIN_SIDE, ImageLimits, InvalidImageError, decode_image
from annotation.models import Image
from inference import maps
from training.models import ModelVersion

__all__ = [
    "Analysis",
    "NoFinalModelsError",
    "analyse",
    "analysis_payload",
    "decode_upload",
    "final_ensemble",
    "image_analyse",
    "model_cache_clear",
    "png_data_url",
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
# What a DICOM CXR may declare, checked from its header before any pixel is decoded.
_DICOM_BITS_ALLOCATED = (1, 8, 16, 32)
_DICOM_SAMPLES = (1, 3)
_DICOM_MAX_FRAMES = 256  # only the first is read
# How much of a deflated data set is inflated to read its header (elements before the pixels).
_DICOM_HEADER_BYTES = 4 * 2**20


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------


def _is_dicom(data: bytes, name: str) -> bool:
    # Part 10 files carry "DICM" after a 128-byte preamble; bare data sets only their suffix.
    return data[128:132] == b"DICM" or name.lower().endswith(_DICOM_SUFFIXES)


def upload_limits() -> ImageLimits:
    """The largest image accepted (the MASKLOOP_MAX_IMAGE_SIDE and _PIXELS settings)."""
    return ImageLimits(
        max_side=settings.MASKLOOP_MAX_IMAGE_SIDE, max_pixels=settings.MASKLOOP_MAX_IMAGE_PIXELS
    )


def decode_upload(data: bytes, name: str) -> np.ndarray:
    """Reads an uploaded CXR as 8-bit grayscale.

    PNG and JPEG go through `annotation.imaging.decode_image`, the same decoding that made the
    display copies the networks were trained on (16-bit images are stretched from their minimum
    to their maximum). DICOM gets its modality LUT (rescale slope / intercept), then its VOI LUT
    or window centre / width, and MONOCHROME1 images (where a high value is dark) are inverted.
    Either way the size is checked from the header, against `upload_limits()`, before any pixel
    is decoded.

    Args:
        data: the file's bytes.
        name: the file's name, used in messages and to recognise DICOM files without a preamble.

    Returns:
        uint8 (H, W) array.

    Raises:
        InvalidImageError: not a PNG, JPEG or DICOM image, one that cannot be read, or one larger
            than the limits; the message says why.
    """
    if not data:
        raise InvalidImageError(f"{name} is empty")
    limits = upload_limits()
    if data.startswith((_PNG_MAGIC, _JPEG_MAGIC)):  # by content: a name can be wrong
        gray = decode_image(data, what=name, limits=limits).gray
    elif _is_dicom(data, name):
        gray = _decode_dicom(data, name, limits)
    else:
        raise InvalidImageError(f"{name} is not a PNG, JPEG or DICOM image")
    h, w = gray.shape
    if min(h, w) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {w}×{h} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(w, h, name)
    return gray


def _dicom_int(ds: Any, keyword: str, default: int | None, name: str) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise InvalidImageError(f"{name} is a DICOM file without an image (no {keyword})")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidImageError(f"{name} has an unreadable {keyword} ({value!r})") from None


def _check_dicom_header(ds: Any, name: str, limits: ImageLimits) -> int:
    """Checks the image a DICOM header declares; returns its number of frames."""
    rows = _dicom_int(ds, "Rows", None, name)
    columns = _dicom_int(ds, "Columns", None, name)
    if min(rows, columns) < MIN_SIDE:
        raise InvalidImageError(
            f"{name} is only {columns}×{rows} pixels; a CXR needs at least {MIN_SIDE}×{MIN_SIDE}"
        )
    limits.check(columns, rows, name)
    frames = _dicom_int(ds, "NumberOfFrames", 1, name)
    if not 1 <= frames <= _DICOM_MAX_FRAMES:
        raise InvalidImageError(
            f"{name} declares {frames} frames; a radiograph has 1 to {_DICOM_MAX_FRAMES}"
        )
    bits = _dicom_int(ds, "BitsAllocated", None, name)
    if bits not in _DICOM_BITS_ALLOCATED:
        raise InvalidImageError(
            f"{name} declares {bits} bits allocated per sample; expected one of "
            f"{', '.join(map(str, _DICOM_BITS_ALLOCATED))}"
        )
    samples = _dicom_int(ds, "SamplesPerPixel", 1, name)
    if samples not in _DICOM_SAMPLES:
        raise InvalidImageError(f"{name} declares {samples} samples per pixel; expected 1 or 3")
    return frames


def _read_dicom(data: bytes, name: str, limits: ImageLimits) -> tuple[Any, int]:
    """The data set with its pixel data still encoded, after its header passed the checks."""
    import pydicom
    from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    part10 = data[128:132] == b"DICM"
    if part10:
        fp = io.BytesIO(data)
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # pydicom would inflate the whole data set first: a small file can inflate to
            # gigabytes. Inflate the header, check it, then no more than it declares.
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            body = data[fp.tell() :]
            head = inflater.decompress(body, _DICOM_HEADER_BYTES)
            header = read_dataset(
                io.BytesIO(head), False, True, stop_when=lambda tag, vr, length: tag == 0x7FE00010
            )
            frames = _check_dicom_header(header, name, limits)
            declared = (
                int(header.Rows)
                * int(header.Columns)
                * frames
                * int(header.get("SamplesPerPixel", 1) or 1)
                * -(-int(header.BitsAllocated) // 8)
            )
            room = declared + _DICOM_HEADER_BYTES
            rest = inflater.decompress(inflater.unconsumed_tail, room - len(head) + 1)
            if len(head) + len(rest) > room:
                raise InvalidImageError(
                    f"{name} inflates to more than its header declares ({_columns_rows(header)})"
                )
            ds = read_dataset(io.BytesIO(head + rest), False, True)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian  # inflated: native pixels now
            ds.file_meta = meta
            return ds, frames
    header = pydicom.dcmread(io.BytesIO(data), force=not part10, stop_before_pixels=True)
    frames = _check_dicom_header(header, name, limits)
    return pydicom.dcmread(io.BytesIO(data), force=not part10), frames


def _columns_rows(ds: Any) -> str:
    return f"{ds.get('Columns')}×{ds.get('Rows')} pixels"


def _decode_dicom(data: bytes, name: str, limits: ImageLimits) -> np.ndarray:
    try:
        return _decode_dicom_checked(data, name, limits)
    except InvalidImageError:
        raise
    except Exception as exc:  # pydicom and zlib raise many types on a damaged file
        raise InvalidImageError(f"{name} is not a readable DICOM file ({exc})") from None


def _decode_dicom_checked(data: bytes, name: str, limits: ImageLimits) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, pixel_array

    ds, frames = _read_dicom(data, name, limits)
    if "PixelData" not in ds:
        raise InvalidImageError(f"{name} is a DICOM file without an image (no Pixel Data)")
    try:
        with warnings.catch_warnings():
            # A compressed frame larger than its header says is a bomb, not a warning.
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            # Only the first frame is decoded: a multi-frame radiograph's first is the image.
            pixels = np.asarray(pixel_array(ds, index=0 if frames > 1 else None))
    except Exception as exc:  # pydicom raises many types for codecs it lacks
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        described = f" ({syntax.name})" if syntax is not None else ""
        raise InvalidImageError(
            f"the image in {name} cannot be decoded{described}: {exc}. "
            "Export it uncompressed or as PNG."
        ) from None
    if pixels.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise InvalidImageError(f"{name} decodes to {pixels.shape}, not its {_columns_rows(ds)}")

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        # pydicom already converted YBR to RGB; ITU-R 601 luma as Pillow's convert("L").
        rgb = pixels[..., :3].astype(np.float64)
        top = float(2 ** int(ds.get("BitsStored", 8)) - 1)
        luma = rgb @ np.array([0.299, 0.587, 0.114]) / top
        return np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8)
    if pixels.ndim != 2:
        raise InvalidImageError(f"{name} holds an image of shape {pixels.shape}, not a CXR")

    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    unit = _voi_unit(values, ds)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


def _first(value: Any) -> float:
    """The first of a multi-valued DICOM element (several windows: the first is the default)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        value = value[0]
    return float(value)


def _voi_unit(values: np.ndarray, ds: Any) -> np.ndarray:
    """Modality values → display values in [0, 1] (DICOM PS3.3 C.11.2).

    A VOI LUT Sequence is applied as a table (its output has LUT Descriptor[2] bits); otherwise
    Window Center / Width with the VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID); with
    neither, the image is stretched from its minimum to its maximum.
    """
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq and lut_seq[0].get("LUTDescriptor") and lut_seq[0].get("LUTData") is not None:
        from pydicom.pixels import apply_voi

        bits = int(lut_seq[0].LUTDescriptor[2])
        out = np.asarray(apply_voi(values, ds), dtype=np.float64)
        return np.clip(out / float(2**bits - 1), 0.0, 1.0)

    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first(center), _first(width)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        if function == "SIGMOID" and w > 0:
            return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
        if function == "LINEAR_EXACT" and w > 0:
            return np.clip((values - c) / w + 0.5, 0.0, 1.0)
        if w >= 1:  # LINEAR (C.11.2.1.2.1): centre and width of the discrete pixel grid
            if w == 1:
                return (values > c - 0.5).astype(np.float64)
            return np.clip((values - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0)
        # A window narrower than the standard allows: fall through to the full range.

    lo, hi = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float64)
    return (values - lo) / (hi - lo)


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
    """A model version as the viewer describes it."""
    return {
        "id": mv.pk,
        "arch": mv.arch,
        "encoder": mv.encoder,
        "input_size": (mv.config or {}).get("input_size"),
        "round": mv.run.round.number,
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
    return {
        "width": int(w),
        "height": int(h),
        "detected": result.detected,
        "threshold": 0.5,
        "max_probability": result.max_probability,
        "severity": severity_dict(result.severity),
        "cxr": png_data_url(_fit(result.gray, max_side)),
        "map": png_data_url(_fit(result.map, max_side)),
        "gradcam": png_data_url(_fit(cam, max_side)) if cam is not None else None,
        "models": [model_dict(mv) for mv in result.models],
        "classifier": model_dict(result.classifier) if result.classifier is not None else None,
    }
