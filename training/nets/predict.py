"""Probability maps from trained weights, at each image's own resolution, for one network or an
ensemble of trained runs."""

from __future__ import annotations

import io
import itertools
import json
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf
from PIL import Image

from training.nets.builders import build_model
from training.nets.config import TrainConfig
from training.nets.data import preprocess, resize_probability
from training.nets.detection import THRESHOLD, ensemble

T = TypeVar("T")
R = TypeVar("R")


def load_model(config: TrainConfig, weights_path: str | os.PathLike[str]) -> tf.keras.Model:
    """Rebuilds the network of `config` and loads its trained weights.

    Args:
        config: the run's config; a classifier config gives the classifier.
        weights_path: the weights `fit` saved.

    Returns:
        The network, uncompiled.
    """
    if config.is_classifier:
        from training.nets.classifier import load_classifier

        return load_classifier(config, weights_path)
    model = build_model(
        config.arch,
        config.encoder,
        freeze_encoder=config.freeze_encoder,
        input_size=config.input_size,
        weights=None,
    )
    model.load_weights(os.fspath(weights_path))
    return model


def predict_probabilities(
    model: tf.keras.Model, grays: Iterable[np.ndarray], *, size: int, batch_size: int = 8
) -> Iterator[np.ndarray]:
    """Yields one float32 probability map per 8-bit grayscale image, at that image's size."""
    batch: list[np.ndarray] = []

    def flush() -> Iterator[np.ndarray]:
        x = np.stack([preprocess(g, size) for g in batch])
        probs = model(x, training=False).numpy()[..., 0]
        for gray, prob in zip(batch, probs, strict=True):
            yield resize_probability(prob, gray.shape[0], gray.shape[1])
        batch.clear()

    for gray in grays:
        batch.append(gray)
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def predicted_mask(
    prob: np.ndarray, height: int, width: int, threshold: float = THRESHOLD
) -> np.ndarray:
    """The binary mask at the CXR's own size: the probability quantised to 8 bits (the
    precision of every image the platform stores), resized back bilinearly in Pillow's 8-bit
    mode, then thresholded.

    This is ``resize_probability(prob, height, width) >= threshold`` up to that quantisation:
    only pixels whose resized probability lies within 1/255 of the threshold can differ. For a
    3000-px CXR it takes about 19 ms instead of 72 ms in float.

    Args:
        prob: (size, size) or (size, size, 1) probabilities at network resolution.
        height: the CXR's height.
        width: the CXR's width.
        threshold: the detection threshold, in (0, 1].

    Returns:
        bool (height, width).
    """
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    levels = np.rint(np.clip(np.nan_to_num(p), 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    if levels.shape != (height, width):
        resized = Image.fromarray(levels).resize((width, height), Image.Resampling.BILINEAR)
        levels = np.asarray(resized)
    # p >= t  ⟺  255·p >= 255·t, i.e. a level of at least ceil(255·t - 1e-6) once rounded.
    return levels >= np.uint8(min(255, max(1, int(np.ceil(threshold * 255.0 - 1e-6)))))


def mask_png(mask: np.ndarray) -> bytes:
    """A binary mask as an 8-bit 0/255 PNG, the format of every stored and exported mask (a
    1-bit PNG encodes faster but decodes as booleans in other tools). zlib's run-length
    strategy suits masks: for a 3000-px one it encodes in about 19 ms instead of 32 ms, and
    smaller."""
    buf = io.BytesIO()
    gray = np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255)
    Image.fromarray(gray, mode="L").save(buf, format="PNG", compress_level=6, compress_type=Z_RLE)
    return buf.getvalue()


Z_RLE = 3  # zlib's Z_RLE strategy, which Pillow's PNG writer takes as compress_type


def default_workers() -> int:
    """Threads for the CPU stages around the network: one per core, at most 16."""
    return max(2, min(16, os.cpu_count() or 2))


def predict_pipelined(
    forward: Callable[[np.ndarray], np.ndarray],
    items: Iterable[T],
    *,
    load: Callable[[T], np.ndarray],
    finish: Callable[[T, np.ndarray, np.ndarray], R],
    size: int,
    batch_size: int = 8,
    workers: int | None = None,
) -> Generator[R, None, None]:
    """Predicts items in batches with the CPU stages in a thread pool, beside the network.

    While the network runs on one batch, the pool decodes and preprocesses the next two
    (`load`, then `preprocess`) and finishes the earlier ones (`finish`: e.g. resize back,
    threshold, encode, store). Pillow, numpy and TensorFlow release the GIL in their heavy
    parts, so on a GPU the network no longer waits for the CPU, and on a CPU the stages fill
    the cores the network leaves idle. Results come in the order of `items`; at most a few
    batches are held in memory. Closing the generator early cancels the work not yet begun.

    Args:
        forward: (B, size, size, 3) float32 → (B, size, size) probabilities, e.g.
            `Member.predict`; called from the consuming thread only.
        items: what to predict (ids, paths, …).
        load: item → 8-bit grayscale CXR (runs in the pool).
        finish: (item, gray, probability at network resolution) → result (runs in the pool).
        size: the network's input side.
        batch_size: images per forward pass.
        workers: pool threads (default `default_workers()`).

    Returns:
        An iterator over `finish`'s results, in item order.

    Raises:
        Whatever `load`, `forward` or `finish` raises, when its item's turn comes.
    """
    workers = workers or default_workers()
    batches = _chunks(iter(items), max(batch_size, 1))
    loading: deque[tuple[list[T], list[Future]]] = deque()
    finishing: deque[Future] = deque()
    bound = 2 * batch_size + workers  # finished results waiting for the consumer, at most

    def prepare(item: T) -> tuple[np.ndarray, np.ndarray]:
        gray = load(item)
        return gray, preprocess(gray, size)

    pool = ThreadPoolExecutor(workers, thread_name_prefix="predict")

    def fill() -> None:
        while len(loading) < PREFETCH_BATCHES:
            batch = next(batches, None)
            if batch is None:
                return
            loading.append((batch, [pool.submit(prepare, item) for item in batch]))

    try:
        fill()
        while loading:
            batch, futures = loading.popleft()
            fill()
            prepared = [f.result() for f in futures]
            probs = forward(np.stack([x for _, x in prepared]))
            for item, (gray, _), prob in zip(batch, prepared, probs, strict=True):
                finishing.append(pool.submit(finish, item, gray, prob))
            while finishing and (finishing[0].done() or len(finishing) > bound):
                yield finishing.popleft().result()
        while finishing:
            yield finishing.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


PREFETCH_BATCHES = 2  # batches decoded ahead of the network


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two binary masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# --------------------------------------------------------------------------------------------
# Trained runs and ensembles
# --------------------------------------------------------------------------------------------


@dataclass
class Member:
    """One trained network of an ensemble."""

    config: TrainConfig
    weights: Path
    model: Any  # tf.keras.Model
    _forward: Any = None
    _calls: int = 0

    # Eager calls before the forward pass is traced into a graph (see `predict`).
    EAGER_CALLS = 2

    def predict(self, x: np.ndarray, graph: bool | None = None) -> np.ndarray:
        """(B, S, S, 3) inputs → (B, S, S) probabilities.

        `graph` True / False forces the traced / eager forward pass; None chooses as below.

        After the first `EAGER_CALLS` batches the network runs as one traced graph: calling a
        Keras model eagerly walks its hundreds of layers in Python, which costs several times
        the computation itself at batch 1 on a CPU (bench/predict_bench.py), but tracing
        costs seconds once, more than a couple of eager batches.
        """
        self._calls += 1
        if graph is False or (graph is None and self._calls <= self.EAGER_CALLS):
            return self.model(x, training=False).numpy()[..., 0]
        if self._forward is None:
            size = self.config.input_size
            self._forward = tf.function(
                lambda t: self.model(t, training=False),
                input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)],
            )
        return self._forward(tf.constant(x, tf.float32)).numpy()[..., 0]


def load_run(path: str | os.PathLike[str]) -> tuple[TrainConfig, Path]:
    """A training run's config and weights file.

    Args:
        path: a run folder (with ``model.weights.h5`` and ``run.json`` or ``config.json``) or a
            weights file with one of those JSON files beside it.

    Returns:
        (config, weights file).

    Raises:
        FileNotFoundError: no weights or no config found.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        candidates = [
            path / "model.weights.h5",
            *sorted(path.glob("*.weights.h5")),
            *sorted(path.glob("*.h5")),
        ]
        weights = next((p for p in candidates if p.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"no weights file (*.h5) in {path}")
    else:
        if not path.is_file():
            raise FileNotFoundError(f"weights not found: {path}")
        folder, weights = path.parent, path
    for name in ("run.json", "config.json"):
        meta = folder / name
        if meta.is_file():
            data = json.loads(meta.read_text())
            return TrainConfig.from_dict(data.get("config", data)), weights
    raise FileNotFoundError(f"no run.json or config.json beside {weights}")


def load_members(paths: Sequence[str | os.PathLike[str]]) -> list[Member]:
    """Loads trained segmentation runs (folders or weights files) as ensemble members.

    Raises:
        FileNotFoundError: a run without weights or config.
        ValueError: a run is a classifier (it draws no infection map).
    """
    members = []
    for p in paths:
        config, weights = load_run(p)
        if config.is_classifier:
            raise ValueError(f"{p} is a classifier; infection maps need segmentation networks")
        members.append(Member(config, weights, load_model(config, weights)))
    return members


def predict_ensemble(
    members: Sequence[Member], grays: Sequence[np.ndarray], graph: bool | None = None
) -> list[np.ndarray]:
    """Ensemble probability maps at network resolution (the largest member input size).

    Each member sees the images at its own input size; members of a smaller size are
    resized up bilinearly before the mean.

    Args:
        members: the ensemble (one member: a single network).
        grays: 8-bit grayscale CXRs.
        graph: see `Member.predict`.

    Returns:
        One (S, S) float32 map per image, S the largest member input size.
    """
    size = max(m.config.input_size for m in members)
    per_member = []
    for m in members:
        x = np.stack([preprocess(g, m.config.input_size) for g in grays])
        probs = m.predict(x, graph)
        if m.config.input_size != size:
            probs = np.stack([resize_probability(p, size, size) for p in probs])
        per_member.append(probs)
    return [ensemble([p[i] for p in per_member]) for i in range(len(grays))]
