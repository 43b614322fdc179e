"""Training configuration: a frozen dataclass saved beside every run's weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Arch = Literal["unet", "unetpp", "dla"]
Encoder = Literal["densenet121", "chexnet", "inceptionv3", "resnet50"]

ARCHITECTURES: tuple[str, ...] = ("unet", "unetpp", "dla")
ENCODERS: tuple[str, ...] = ("densenet121", "chexnet", "inceptionv3", "resnet50")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run, and nothing that does not.

    The paper preset is the study's setting (224 px, batch 32, 50 epochs, Adam 1e-4);
    the tiny preset runs the whole loop in minutes on two CPU cores.
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
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
    "small": TrainConfig(input_size=64, batch_size=8, epochs=2, learning_rate=1e-3),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """Returns the named preset with `overrides` applied."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    return base.replace(**overrides)
