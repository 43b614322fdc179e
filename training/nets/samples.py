"""What a data set folder holds: its samples (CXR, class, masks, patient) and their classes.

`training.nets.layouts.read_dataset` makes them; training, evaluation, folds and the platform's
import read them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

COVID = "COVID-19"
NON_COVID = "Non-COVID"
NORMAL = "Normal"
CLASSES: tuple[str, ...] = (COVID, NON_COVID, NORMAL)


@dataclass(frozen=True)
class Sample:
    """One CXR and what the data set says about it.

    Attributes:
        key: the image path relative to the data root (POSIX separators); unique.
        image: path of the CXR.
        image_class: "COVID-19", "Non-COVID" or "Normal".
        mask: path of its infection mask; None for a control (empty by definition) and for a
            COVID-19 image that is not annotated yet.
        lung: path of its lung mask, if the data set has one.
        patient: patient id, or None when unknown (the image is then its own group).
    """

    key: str
    image: Path
    image_class: str
    mask: Path | None = None
    lung: Path | None = None
    patient: str | None = None

    @property
    def covid(self) -> bool:
        """Whether the CXR is COVID-19 (the detection ground truth)."""
        return self.image_class == COVID

    @property
    def annotated(self) -> bool:
        """Whether its infection mask is known: a mask file, or a control's empty mask."""
        return self.mask is not None or not self.covid


@dataclass(frozen=True)
class Dataset:
    """The samples of one folder, sorted by key."""

    root: Path
    samples: tuple[Sample, ...]
    layout: str  # "qata", "covid-qu-ex", "csv", "pairs" or "mixed"
    unmatched_masks: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def images(self) -> list[str]:
        return [str(s.image) for s in self.samples]

    @property
    def masks(self) -> list[str | None]:
        return [None if s.mask is None else str(s.mask) for s in self.samples]

    @property
    def lungs(self) -> list[str | None]:
        return [None if s.lung is None else str(s.lung) for s in self.samples]

    @property
    def covid_flags(self) -> list[bool]:
        return [s.covid for s in self.samples]

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.samples]

    @property
    def classes(self) -> list[str]:
        return [s.image_class for s in self.samples]

    @property
    def groups(self) -> list[str | None]:
        return [s.patient for s in self.samples]

    def subset(self, samples: Iterable[Sample]) -> Dataset:
        """The same data set restricted to `samples` (e.g. a fold)."""
        return replace(self, samples=tuple(samples), unmatched_masks=())

    def annotated(self) -> Dataset:
        """Only the samples whose infection mask is known: what a network can train on."""
        return self.subset(s for s in self.samples if s.annotated)

    def summary(self) -> str:
        """One line for people: counts, layout, and what was left aside."""
        n_covid = sum(self.covid_flags)
        text = (
            f"{len(self)} images ({n_covid} COVID-19, {len(self) - n_covid} controls) in "
            f"{self.root} [{self.layout} layout]"
        )
        with_lungs = sum(s.lung is not None for s in self.samples)
        if with_lungs:
            text += f", {with_lungs} with lung masks"
        not_annotated = sum(not s.annotated for s in self.samples)
        if not_annotated:
            text += f"; {not_annotated} COVID-19 image(s) without an infection mask"
        if self.unmatched_masks:
            text += f"; {len(self.unmatched_masks)} mask(s) without an image were ignored"
        return text
