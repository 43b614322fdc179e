"""Training configuration: a frozen dataclass saved beside every run's weights.

The lists of architectures, encoders and presets live here, once: the CLI's choices, the apps'
forms and the builders' checks are all derived from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Display names, in the paper's order; the keys are what configs and command lines use.
ARCHITECTURE_LABELS: dict[str, str] = {"unet": "U-Net", "unetpp": "UNet++", "dla": "DLA"}
ENCODER_LABELS: dict[str, str] = {
    "densenet121": "DenseNet-121",
    "chexnet": "CheXNet",
    "inceptionv3": "Inception-v3",
    "resnet50": "ResNet-50",
}
# CheXNet is DenseNet-121 fine-tuned on ChestX-ray14: same graph, its own weights file.
BACKBONE_OF_ENCODER: dict[str, str] = {
    "densenet121": "densenet121",
    "chexnet": "densenet121",
    "inceptionv3": "inceptionv3",
    "resnet50": "resnet50",
}
ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURE_LABELS)
ENCODERS: tuple[str, ...] = tuple(ENCODER_LABELS)

SEGMENTATION = "segmentation"
CLASSIFIER = "classifier"
TASKS: tuple[str, ...] = (SEGMENTATION, CLASSIFIER)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run, and nothing that does not.

    The paper preset is the study's setting (224 px, batch 32, 50 epochs, Adam 1e-4);
    the tiny preset runs the whole loop in minutes on two CPU cores.

    Attributes:
        task: "segmentation" (an infection-mask network: `arch` on `encoder`) or "classifier"
            (the encoder with a COVID-19 / control head, for Grad-CAM; `arch` and
            `freeze_encoder` do not apply).
        weights: a local weights file (ImageNet "notop", CheXNet, or a whole model) or
            "imagenet"; see `build_model`.
        encoder_weights: an encoder file from self-supervised pretraining
            (`training.nets.pretrain`), loaded into the encoder by layer name after `weights`.
            Segmentation networks only.
    """

    arch: str = "unet"
    encoder: str = "densenet121"
    freeze_encoder: bool = False
    input_size: int = 224
    batch_size: int = 32
    epochs: int = 50
    learning_rate: float = 1e-4
    seed: int = 0
    augment: bool = True
    weights: str | None = None
    task: str = SEGMENTATION
    encoder_weights: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFIER

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config saved by `to_dict` (configs saved before `task` existed read as
        segmentation)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(input_size=224, batch_size=32, epochs=50, learning_rate=1e-4),
    # 30 one-step epochs: after the first epoch's graph tracing each step costs ~0.2 s on a CPU,
    # and fewer steps leave the network predicting infection everywhere.
    "tiny": TrainConfig(input_size=32, batch_size=8, epochs=30, learning_rate=1e-3, augment=False),
    # A CPU-only host: about a minute per network on two cores for a few dozen images, and
    # held-out Dice ~0.8 on the phantoms (bench/precise_bn.py): masks worth picking.
    "small": TrainConfig(input_size=64, batch_size=8, epochs=40, learning_rate=1e-3),
}

# How a preset's classifier differs from its segmentation networks: the paper fine-tunes the
# classifiers for 10 epochs at 1e-5 (Sec. III-A); the other presets keep their own length.
CLASSIFIER_CHANGES: dict[str, dict[str, Any]] = {"paper": {"epochs": 10, "learning_rate": 1e-5}}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """Returns the named preset with `overrides` applied.

    Args:
        name: a key of `PRESETS`.
        **overrides: TrainConfig fields. ``task="classifier"`` first applies the preset's
            classifier setting (`CLASSIFIER_CHANGES`), so ``preset("paper", task="classifier")``
            is the paper's classifier: 10 epochs at 1e-5.

    Returns:
        The config.

    Raises:
        ValueError: unknown preset or option.
    """
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    if overrides.get("task") == CLASSIFIER:
        base = base.replace(**CLASSIFIER_CHANGES.get(name, {}))
    return base.replace(**overrides)


def classifier_config(config: TrainConfig, preset_name: str, encoder: str) -> TrainConfig:
    """The Grad-CAM classifier trained beside segmentation networks of `config`.

    Args:
        config: the segmentation networks' config (size, batch, seed, augmentation, weights).
        preset_name: the preset they came from: the paper preset's classifier trains 10 epochs
            at 1e-5, the others as long and as fast as `config`.
        encoder: the classifier's encoder.

    Returns:
        A config with task "classifier".
    """
    changes = CLASSIFIER_CHANGES.get(preset_name, {})
    return config.replace(
        task=CLASSIFIER,
        encoder=encoder,
        freeze_encoder=False,
        epochs=changes.get("epochs", config.epochs),
        learning_rate=changes.get("learning_rate", config.learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# Self-supervised pretraining (training.nets.pretrain), kept here so the web side needs no TF
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines a pretraining run; saved in the encoder file and beside it.

    Attributes:
        encoder: one of ENCODERS; "chexnet" pretrains the same DenseNet-121 graph.
        input_size: side of the square input, a multiple of 32.
        mask_patch: side of a masked patch in input pixels; must divide `input_size`.
        mask_ratio: share of the patches masked in every image.
    """

    encoder: str = "densenet121"
    input_size: int = 224
    batch_size: int = 32
    epochs: int = 100
    learning_rate: float = 1e-4
    mask_patch: int = 32
    mask_ratio: float = 0.6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(
                f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}"
            )
        if self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a positive multiple of 32, got {self.input_size}")
        if self.mask_patch < 1 or self.input_size % self.mask_patch:
            raise ValueError(
                f"mask_patch ({self.mask_patch} px) must divide input_size ({self.input_size})"
            )
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"mask_ratio must be between 0 and 1, got {self.mask_ratio}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown pretraining option(s): {', '.join(sorted(unknown))}")
        return cls(**data)


# SimMIM's setting (192 px, 32-px patches, 60 % masked, 100 epochs) at the paper's 224 px; the
# small presets keep an 8×8 patch grid so the same share of anatomy is hidden at any size.
PRETRAIN_PRESETS: dict[str, PretrainConfig] = {
    "paper": PretrainConfig(input_size=224, batch_size=32, epochs=100, learning_rate=1e-4),
    "tiny": PretrainConfig(
        input_size=32, batch_size=8, epochs=10, learning_rate=1e-3, mask_patch=4
    ),
    "small": PretrainConfig(
        input_size=64, batch_size=8, epochs=20, learning_rate=1e-3, mask_patch=8
    ),
}


def pretrain_preset(name: str, **overrides: Any) -> PretrainConfig:
    """The named pretraining preset with `overrides`.

    Raises:
        ValueError: unknown preset or option.
    """
    try:
        base = PRETRAIN_PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; choose one of {', '.join(PRETRAIN_PRESETS)}"
        ) from None
    return dataclasses.replace(base, **overrides)
