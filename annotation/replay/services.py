"""Running a replay: a data set with known masks through the real loop, with simulated MDs.

The masks are imported hidden (`ingest_folder(hide_masks=True)`) and kept aside as
`ReplayTruth` rows, never as `Mask`s. Everything else is the platform's own: simulated MDs
(users with the MD role) draw through `mask_draw`, rounds start through `round_start`, the
Celery workers train and predict, MDs are handed items by `item_claim` (leases, the round's
reviewers per item) and decide through `decision_create`; an admin settles ties through
`decision_adjudicate`; a rejected image is redrawn through `mask_draw`.

A replay needs a database of its own: Stage II plans over every image there is, so other
images would mix into its rounds. It runs in the calling process (`manage.py replay`), which
waits for the workers between rounds and writes its progress to the `ReplayRun` row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from annotation import imaging, services, storage
from annotation.errors import DomainError
from annotation.ingest import ingest_folder
from annotation.models import (
    Candidate,
    Image,
    ImageClass,
    ReplayRun,
    ReplayTruth,
    ReviewItem,
    ReviewOrder,
    Role,
    Round,
    Screening,
)
from annotation.replay import sim
from training import services as training_services
from training.models import PretrainedEncoder
from training.services import read_dataset

log = logging.getLogger(__name__)

# The review order of the Stage I / II rounds: the replay's name → round_start's ReviewOrder.
ORDERS = {"queue": ReviewOrder.CREATED, "disagreement": ReviewOrder.DISAGREEMENT}
PRETRAIN = "pretrain"  # start_weights: pretrain an encoder on the replay's images first
NETWORK = list[str]


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a replay does, saved with it: the same config and seed run the same replay
    (up to TensorFlow's own nondeterminism on the worker).

    Attributes:
        seed: seeds the Stage I subset, every drawing and pick, the folds and the training.
        preset: the training preset of every round; `overrides` changes its fields (e.g.
            {"epochs": 2}).
        stage1_fraction: the share of COVID-19 images the MDs draw first (the study: 500 of
            2951, about 0.17); at least `folds` images.
        folds: Stage I cross-validation folds.
        max_stage2_rounds: the stopping rule: Stage II rounds at most, even if images are left.
        final: train and measure the final networks at the end.
        mds: simulated MDs; reviewers_per_item: how many of them decide each item (a tie
            goes to the simulated admin). An MD never reviews an item holding their own
            drawing, so Stage I needs one MD more than reviewers per item.
        boundary_px, simplify_px, min_component_px: the drawing's degradation (sim.Degradation).
        none_below: an MD rejects every candidate when the best looks below this Dice.
        pick_noise: the standard deviation of an MD's misjudgement of Dice (disagreement).
        seconds_per_pick, seconds_per_drawing: the MD time the estimate counts.
        order: the Stage I / II rounds' review order: "queue" (the order the items were
            made) or "disagreement" (highest ensemble disagreement first).
        start_weights: every round's starting weights: "" (from scratch), "pretrain" (an
            encoder pretrained first, through the training queue, on every imported image,
            labelled or not, at the pretraining preset named like `preset`, for the encoder of
            the first Stage I network), or a local weights file (.h5) on the workers.
        pretrain_epochs: the pretraining's epochs instead of its preset's (None: the preset's).
        lung_filter, lung_margin: the Stage I / II rounds remove candidate pixels outside the
            images' imported lung masks, dilated by lung_margin % (None: the default).
    """

    seed: int = 0
    preset: str = "small"
    overrides: dict[str, Any] = field(default_factory=dict)
    stage1_networks: list[NETWORK] = field(
        default_factory=lambda: [["unet", "densenet121"], ["unetpp", "densenet121"]]
    )
    stage2_networks: list[NETWORK] = field(
        default_factory=lambda: [["unet", "densenet121"], ["unetpp", "densenet121"]]
    )
    final_networks: list[NETWORK] = field(default_factory=lambda: [["unet", "densenet121"]])
    stage1_fraction: float = 0.2
    folds: int = 2
    max_stage2_rounds: int = 3
    final: bool = True
    mds: int = 3
    reviewers_per_item: int = 2
    boundary_px: int = 2
    simplify_px: float = 1.5
    min_component_px: int = 16
    none_below: float = 0.5
    pick_noise: float = 0.05
    seconds_per_pick: float = 15.0
    seconds_per_drawing: float = 120.0
    round_timeout_s: float = 4 * 3600.0
    order: str = "queue"
    start_weights: str = ""
    lung_filter: bool = False
    lung_margin: float | None = None
    pretrain_epochs: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.stage1_fraction <= 1:
            raise DomainError("the Stage I fraction must be above 0 and at most 1")
        if self.folds < 2:
            raise DomainError("Stage I needs at least 2 folds")
        if self.reviewers_per_item < 1:
            raise DomainError("each item needs at least one reviewer")
        if self.mds < self.reviewers_per_item + 1:
            raise DomainError(
                f"{self.reviewers_per_item} reviewers per item need at least "
                f"{self.reviewers_per_item + 1} simulated MDs: an MD never reviews an item "
                "holding their own drawing"
            )
        if self.max_stage2_rounds < 0:
            raise DomainError("the number of Stage II rounds cannot be negative")
        if not 0 <= self.none_below <= 1 or self.pick_noise < 0:
            raise DomainError("the none threshold is a Dice (0 to 1) and the noise 0 or more")
        if self.seconds_per_pick < 0 or self.seconds_per_drawing < 0:
            raise DomainError("seconds per pick and per drawing are 0 or more")
        if self.order not in ORDERS:
            raise DomainError(
                f"review order {self.order!r} is not available; choose {', '.join(ORDERS)}"
            )
        if self.start_weights == PRETRAIN:
            if self.preset not in training_services.PRETRAIN_PRESETS:
                raise DomainError(
                    f"there is no pretraining preset {self.preset!r} to pretrain with; choose "
                    f"the preset {' or '.join(training_services.PRETRAIN_PRESETS)}"
                )
        elif self.start_weights and not self.start_weights.endswith(".h5"):
            raise DomainError(
                f"starting weights are {PRETRAIN!r} or a Keras weights file (.h5) on the "
                f"workers, not {self.start_weights!r}"
            )
        if self.pretrain_epochs is not None and (
            self.start_weights != PRETRAIN or self.pretrain_epochs < 1
        ):
            raise DomainError("pretraining epochs are 1 or more, with start_weights 'pretrain'")
        if self.lung_margin is not None and not 0 <= self.lung_margin <= 25:
            raise DomainError(
                f"the lung margin is a percentage from 0 to 25, not {self.lung_margin}"
            )
        if self.lung_margin is not None and not self.lung_filter:
            raise DomainError("a lung margin needs the lung filter")
        try:
            self.degradation  # noqa: B018 - validates the amounts
        except ValueError as exc:
            raise DomainError(str(exc)) from None

    @property
    def degradation(self) -> sim.Degradation:
        return sim.Degradation(
            boundary_px=self.boundary_px,
            simplify_px=self.simplify_px,
            min_component_px=self.min_component_px,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise DomainError(f"unknown replay setting(s): {', '.join(unknown)}")
        return cls(**data)


# ---------------------------------------------------------------- preparing


@transaction.atomic
def replay_prepare(*, dataset: str | Path, config: ReplayConfig) -> ReplayRun:
    """Imports the data set with its masks hidden, keeps the known masks aside, keeps any image
    screening flagged (the simulated admin), and makes the simulated MDs and admin.

    Raises:
        DomainError: the database already holds images, the folder is not a layout ingest
            reads, or a COVID-19 image has no known mask.
    """
    if Image.objects.exists():
        raise DomainError(
            "replay needs a database of its own, and this one already holds images: point "
            "DATABASE_URL at an empty database (then manage.py migrate)"
        )
    root = Path(dataset)
    try:
        data = read_dataset(root)
    except ValueError as exc:
        raise DomainError(f"{root}: {exc}") from None
    missing = [s.key for s in data.samples if s.image_class == "COVID-19" and s.mask is None]
    if missing:
        raise DomainError(
            f"replay needs every COVID-19 image's mask; {len(missing)} have none "
            f"(e.g. {missing[0]})"
        )
    known = {
        hashlib.sha256(s.image.read_bytes()).hexdigest(): s.mask
        for s in data.samples
        if s.image_class == "COVID-19"
    }
    report = ingest_folder(root, hide_masks=True)
    run = ReplayRun.objects.create(
        dataset=str(root), seed=config.seed, config=config.to_dict(), folder=""
    )
    run.folder = f"replay/{run.uuid}"
    admin = _admin()
    kept = 0
    for image in Image.objects.filter(screening=Screening.PENDING):
        services.screening_decide(
            image=image,
            decided_by=admin,
            decision="keep",
            reason="replay: every image with a known mask is replayed",
        )
        kept += 1
    truths = 0
    for image in Image.objects.filter(image_class=ImageClass.COVID, sha256__in=list(known)):
        path = known[image.sha256]
        assert path is not None
        pixels = imaging.decode_mask(
            path.read_bytes(), width=image.width, height=image.height, what=f"the mask of {path}"
        )
        name = storage.store(f"{run.folder}/truth/{image.pk}.png", imaging.encode_mask(pixels))
        ReplayTruth.objects.create(run=run, image=image, file=name, area=int(pixels.sum()))
        truths += 1
    run.progress = {
        "step": "imported",
        "ingest": {
            "layout": report.layout,
            "imported": len(report.imported),
            "duplicates": len(report.duplicates),
            "rejected": report.rejected,
            "kept_after_screening": kept,
            "known_masks": truths,
        },
        "log": [f"imported {len(report.imported)} images, {truths} known masks kept aside"],
    }
    run.save(update_fields=["folder", "progress"])
    return run


def _admin() -> Any:
    """The simulated admin: starts the rounds, keeps flagged images, settles ties."""
    admin, _ = get_user_model().objects.get_or_create(username="replay-admin")
    services.user_set_roles(user=admin, roles=[Role.ADMIN])
    return admin


def _simulated_mds(count: int) -> list[Any]:
    User = get_user_model()
    mds = []
    for i in range(1, count + 1):
        md, _ = User.objects.get_or_create(username=f"replay-md{i}")
        services.user_set_roles(user=md, roles=[Role.MD])
        mds.append(md)
    return mds


# ---------------------------------------------------------------- the simulated MDs


class Simulation:
    """The known masks and the simulated MDs' behaviour for one run."""

    def __init__(self, run: ReplayRun):
        self.run = run
        self.config = ReplayConfig.from_dict(run.config)
        self.truth_files = dict(run.truths.values_list("image_id", "file"))
        self._truth: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._sha = dict(Image.objects.filter(pk__in=self.truth_files).values_list("pk", "sha256"))

    def truth(self, image_id: int) -> np.ndarray:
        if image_id not in self._truth:
            self._truth[image_id] = imaging.read_mask_png(storage.read(self.truth_files[image_id]))
        return self._truth[image_id]

    def drawing(self, image_id: int) -> np.ndarray:
        """The MD's drawing of an image: its known mask degraded, the same on every call."""
        rng = sim.rng_for(self.config.seed, "drawing", self._sha[image_id])
        return sim.degrade(self.truth(image_id), self.config.degradation, rng)

    def mask(self, mask_id: int, file: str | None) -> np.ndarray:
        if mask_id not in self._masks:
            self._masks[mask_id] = imaging.read_mask_png(storage.read(file))
        return self._masks[mask_id]

    def pick(self, item: ReviewItem, who: str, *, noise: float | None = None) -> sim.Pick:
        candidates = {
            c.label: self.mask(c.mask_id, c.mask.file.name)
            for c in Candidate.objects.filter(item=item).exclude(label="").select_related("mask")
        }
        rng = sim.rng_for(
            self.config.seed, "pick", self._sha[item.image_id], item.round.number, who
        )
        return sim.md_pick(
            candidates,
            self.truth(item.image_id),
            none_below=self.config.none_below,
            noise=self.config.pick_noise if noise is None else noise,
            rng=rng,
        )


# ---------------------------------------------------------------- running


class ReplayFailed(Exception):
    pass


def replay_execute(
    *, run: ReplayRun, on_step: Callable[[str], None] | None = None, poll_s: float = 1.0
) -> ReplayRun:
    """Runs the protocol to its end (every COVID-19 image has ground truth, or the stopping
    rule), then the final networks, and writes the report. A failure is recorded on the run
    with its reason, and raised again."""
    from annotation.replay.report import replay_report_write

    config = ReplayConfig.from_dict(run.config)
    runner = _Runner(run, config, on_step or (lambda _: None), poll_s)
    try:
        if config.start_weights == PRETRAIN:
            runner.pretrain()
        runner.stage_one()
        for _ in range(config.max_stage2_rounds):
            if not runner.stage_two():
                break
        if config.final:
            runner.final()
        _note(run, "writing the report", step="report")
        replay_report_write(run=run)
    except Exception as exc:
        run.refresh_from_db()
        run.status = ReplayRun.Status.FAILED
        run.failure_reason = f"{type(exc).__name__}: {exc}"
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "failure_reason", "finished_at"])
        raise
    run.refresh_from_db()
    run.status = ReplayRun.Status.DONE
    run.finished_at = timezone.now()
    run.progress = {**run.progress, "step": "done"}
    run.save(update_fields=["status", "finished_at", "progress"])
    return run


def _note(run: ReplayRun, text: str, **fields: Any) -> None:
    log.debug("replay %s: %s", run.pk, text)
    run.refresh_from_db(fields=["progress"])
    lines = [*run.progress.get("log", []), f"{timezone.now():%H:%M:%S} {text}"][-200:]
    run.progress = {**run.progress, **fields, "log": lines, "at": timezone.now().isoformat()}
    run.save(update_fields=["progress"])


class _Runner:
    def __init__(
        self, run: ReplayRun, config: ReplayConfig, on_step: Callable[[str], None], poll_s: float
    ):
        self.run, self.config, self.on_step, self.poll_s = run, config, on_step, poll_s
        self.sim = Simulation(run)
        self.mds = _simulated_mds(config.mds)
        self.admin = _admin()
        self.drawn = 0
        self.pretrained: int | None = run.progress.get("pretrained")

    def say(self, text: str, **fields: Any) -> None:
        _note(self.run, text, **fields)
        self.on_step(text)

    def _draw(self, image: Image) -> None:
        """An MD draws the image: its known mask degraded (round-robin over the MDs)."""
        md = self.mds[self.drawn % len(self.mds)]
        self.drawn += 1
        services.mask_draw(
            image=image,
            author=md,
            data=imaging.encode_mask(self.sim.drawing(image.pk)),
        )

    def _rounds(self) -> list[int]:
        self.run.refresh_from_db(fields=["progress"])
        return list(self.run.progress.get("rounds", []))

    def _options(self, stage: str) -> dict[str, Any]:
        """round_start's options for the replay's order, starting weights and lung filter."""
        c = self.config
        options: dict[str, Any] = {}
        if stage != Round.Stage.FINAL:  # a final round has no review and no candidates
            options["order"] = ORDERS[c.order]
            if c.lung_filter:
                options["lung_filter"] = True
                options["lung_margin"] = c.lung_margin
        if c.start_weights == PRETRAIN:
            options["pretrained_encoder"] = self.pretrained
        elif c.start_weights:
            options["weights_file"] = c.start_weights
        return options

    def pretrain(self) -> None:
        """Pretrains the encoder of the first Stage I network on every imported image
        (through the real service and the training worker), before Stage I."""
        encoder = self.config.stage1_networks[0][1]
        row = services.encoder_pretrain_start(
            encoder=encoder,
            preset=self.config.preset,
            started_by=self.admin,
            overrides={
                "seed": self.config.seed,
                **({"epochs": self.config.pretrain_epochs} if self.config.pretrain_epochs else {}),
            },
        )
        self.say(
            f"pretraining #{row.pk}: {encoder} on {len(row.image_ids)} images "
            f"({self.config.preset}, {row.epochs} epochs)",
            step="pretraining",
            pretrained=row.pk,
        )
        deadline = time.monotonic() + self.config.round_timeout_s
        while time.monotonic() < deadline:
            row.refresh_from_db()
            if row.status == PretrainedEncoder.Status.SUCCEEDED:
                self.pretrained = row.pk
                self.say(f"pretraining #{row.pk} done: loss {row.loss}")
                return
            if row.status == PretrainedEncoder.Status.FAILED:
                raise ReplayFailed(f"pretraining #{row.pk} failed: {row.failure_reason}")
            time.sleep(self.poll_s)
        raise ReplayFailed(
            f"pretraining #{row.pk} still {row.status} after {self.config.round_timeout_s:.0f} s "
            "(are the Celery workers running?)"
        )

    def _start(self, stage: str, networks: list[NETWORK]) -> Round | None:
        try:
            rnd = services.round_start(
                stage=stage,
                started_by=self.admin,
                networks=networks,
                folds=self.config.folds,
                preset=self.config.preset,
                overrides=self.config.overrides,
                reviewers_per_item=self.config.reviewers_per_item,
                seed=self.config.seed,
                **self._options(stage),
            )
        except DomainError as exc:
            if stage == Round.Stage.STAGE_II:
                self.say(f"no Stage II round: {exc}")
                return None
            raise
        self.say(
            f"round {rnd.number} (stage {stage}) started: {rnd.training_runs.count()} trainings",
            rounds=[*self._rounds(), rnd.pk],
            round=rnd.number,
        )
        return rnd

    def _wait(self, rnd: Round, statuses: tuple[str, ...]) -> Round:
        deadline = time.monotonic() + self.config.round_timeout_s
        last = -1.0
        while time.monotonic() < deadline:
            rnd.refresh_from_db()
            if rnd.status in statuses:
                return rnd
            if rnd.status in (Round.Status.FAILED, Round.Status.CANCELLED):
                raise ReplayFailed(
                    f"round {rnd.number} {rnd.status}: {rnd.failure_reason or 'no reason given'}"
                )
            runs = list(rnd.training_runs.all())
            done = sum(r.progress for r in runs) / max(len(runs), 1)
            if done - last >= 0.05:
                last = done
                _note(
                    self.run,
                    f"round {rnd.number}: training {done:.0%}",
                    training=[[r.network, r.fold, r.status, round(r.progress, 3)] for r in runs],
                )
            time.sleep(self.poll_s)
        raise ReplayFailed(
            f"round {rnd.number} still {rnd.status} after {self.config.round_timeout_s:.0f} s "
            "(are the Celery workers running?)"
        )

    def _review(self, rnd: Round) -> None:
        """The MDs take items as the platform hands them out and decide each; ties go to the
        admin; rejected images are redrawn. Until the round is done."""
        decided = 0
        deadline = time.monotonic() + self.config.round_timeout_s
        while time.monotonic() < deadline:
            progressed = False
            for md in self.mds:
                item = services.item_claim(reviewer=md)
                if item is None:
                    continue
                pick = self.sim.pick(item, md.username)
                services.decision_create(
                    item=item,
                    reviewer=md,
                    choice=pick.choice,
                    seconds=self.config.seconds_per_pick,
                )
                decided += 1
                progressed = True
            for item in rnd.items.filter(status=ReviewItem.Status.ADJUDICATION).select_related(
                "round"
            ):
                pick = self.sim.pick(item, self.admin.username, noise=0.0)
                services.decision_adjudicate(
                    item=item,
                    admin=self.admin,
                    choice=pick.choice,
                    seconds=self.config.seconds_per_pick,
                )
                progressed = True
            rnd.refresh_from_db()
            if rnd.status == Round.Status.DONE:
                break
            if rnd.status != Round.Status.REVIEWING:
                raise ReplayFailed(f"round {rnd.number} is {rnd.status} during review")
            if not progressed:
                time.sleep(self.poll_s)  # items still opening in batches
        else:
            raise ReplayFailed(f"round {rnd.number}: review did not finish in time")
        redraw = list(Image.objects.filter(status=Image.Status.REDRAW).order_by("pk"))
        for image in redraw:
            self._draw(image)
        self.say(
            f"round {rnd.number}: {decided} picks, {len(redraw)} redrawn",
            step=f"round {rnd.number} reviewed",
        )

    def stage_one(self) -> None:
        covid = list(
            Image.objects.filter(image_class=ImageClass.COVID, pk__in=self.sim.truth_files)
            .order_by("sha256")
            .only("pk", "sha256")
        )
        n = min(len(covid), max(self.config.folds, round(self.config.stage1_fraction * len(covid))))
        if n < 2:
            raise DomainError(f"replay needs at least 2 COVID-19 images with masks; there are {n}")
        rng = sim.rng_for(self.config.seed, "stage-one")
        subset = [covid[i] for i in sorted(rng.choice(len(covid), size=n, replace=False))]
        for image in subset:
            self._draw(image)
        self.say(f"Stage I: the MDs drew {n} of {len(covid)} COVID-19 images", step="stage I")
        rnd = self._start(Round.Stage.STAGE_I, self.config.stage1_networks)
        assert rnd is not None
        rnd = self._wait(rnd, (Round.Status.REVIEWING, Round.Status.DONE))
        self._review(rnd)

    def stage_two(self) -> bool:
        left = (
            Image.objects.filter(image_class=ImageClass.COVID)
            .exclude(status=Image.Status.ACCEPTED)
            .count()
        )
        if not left:
            return False
        self.say(f"Stage II: {left} COVID-19 images without ground truth", step="stage II")
        rnd = self._start(Round.Stage.STAGE_II, self.config.stage2_networks)
        if rnd is None:
            return False
        rnd = self._wait(rnd, (Round.Status.REVIEWING, Round.Status.DONE))
        self._review(rnd)
        return True

    def final(self) -> None:
        self.say("final networks: training on the accepted masks", step="final")
        rnd = self._start(Round.Stage.FINAL, self.config.final_networks)
        assert rnd is not None
        self._wait(rnd, (Round.Status.DONE,))
        self.say(f"round {rnd.number}: final networks measured", final_round=rnd.pk)
