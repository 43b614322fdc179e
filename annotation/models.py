"""Images, mask versions, rounds, blind review items, decisions and ground truth.

Nothing here is ever overwritten: a mask is a new version, a decision is a new row, and the
ground truth of an image is its newest GroundTruth row.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Role(models.TextChoices):
    MD = "md", "MD"
    ADMIN = "admin", "Admin"
    DATA = "data", "Data team"


class ImageClass(models.TextChoices):
    COVID = "covid19", "COVID-19"
    NON_COVID = "non_covid", "Non-COVID"
    NORMAL = "normal", "Normal"

    @classmethod
    def controls(cls) -> list[str]:
        return [cls.NON_COVID, cls.NORMAL]


class Screening(models.TextChoices):
    CLEAR = "clear", "Passed screening"
    PENDING = "pending", "Flagged: waiting for an admin"
    KEPT = "kept", "Kept by an admin"
    EXCLUDED = "excluded", "Excluded by an admin"

    @classmethod
    def eligible(cls) -> list[str]:
        """The screening states a round may take an image in."""
        return [cls.CLEAR, cls.KEPT]


class Image(models.Model):
    class Status(models.TextChoices):
        UNANNOTATED = "unannotated", "Needs a first mask"
        MANUAL = "manual", "Has a manual mask"
        IN_ROUND = "in_round", "Candidates being made"
        IN_REVIEW = "in_review", "In blind review"
        REDRAW = "redraw", "Waiting for a redraw"
        ACCEPTED = "accepted", "Ground truth accepted"

    name = models.CharField(max_length=255)
    original = models.FileField(upload_to="originals/", max_length=255)
    display = models.FileField(upload_to="display/", max_length=255)
    lung_mask = models.FileField(upload_to="lungs/", max_length=255, blank=True)
    sha256 = models.CharField(max_length=64, unique=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    source = models.CharField(max_length=100)
    image_class = models.CharField(max_length=20, choices=ImageClass.choices)
    patient_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.UNANNOTATED)
    created_at = models.DateTimeField(auto_now_add=True)
    # From the DICOM header of an image imported from DICOM (null otherwise). The SOP Instance
    # UID identifies the image: importing it again is a duplicate whatever its bytes.
    study_uid = models.CharField(max_length=64, null=True, blank=True)
    series_uid = models.CharField(max_length=64, null=True, blank=True)
    sop_instance_uid = models.CharField(max_length=64, null=True, blank=True, unique=True)
    modality = models.CharField(max_length=16, null=True, blank=True)
    view_position = models.CharField(max_length=16, null=True, blank=True)
    pixel_spacing = models.JSONField(
        null=True, blank=True, help_text="[row, column] spacing in mm, from the DICOM header."
    )
    # Screening at import (annotation/services/screening.py): a flagged image is held out of
    # rounds until an admin keeps or excludes it (a ScreeningDecision row each time).
    phash = models.CharField(max_length=64, blank=True, help_text="256-bit perceptual hash, hex.")
    screening = models.CharField(max_length=10, choices=Screening.choices, default=Screening.CLEAR)
    screening_flags = models.JSONField(
        default=list, blank=True, help_text='[{"code", "detail", "image"?, "distance"?}, …]'
    )

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["image_class"])]
        indexes += [
            models.Index(fields=["id"], condition=~Q(screening="clear"), name="image_screened"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_control(self) -> bool:
        return self.image_class in ImageClass.controls()


class Mask(models.Model):
    """One immutable version of an image's mask: a binary PNG at the image's own resolution."""

    class Source(models.TextChoices):
        DRAWN = "drawn", "Drawn by an MD"
        PREDICTED = "predicted", "Predicted by a network"
        IMPORTED = "imported", "Imported"
        CONTROL = "control", "Empty (control class)"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="masks")
    version = models.PositiveIntegerField()
    file = models.FileField(upload_to="masks/", max_length=255)
    sha256 = models.CharField(max_length=64)
    area = models.PositiveIntegerField(help_text="Foreground pixels.")
    source = models.CharField(max_length=20, choices=Source.choices)
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    model_version = models.ForeignKey(
        "training.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="masks",
    )
    round = models.ForeignKey(
        "annotation.Round", null=True, blank=True, on_delete=models.PROTECT, related_name="masks"
    )
    based_on = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="derived"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "version"]
        constraints = [
            models.UniqueConstraint(fields=["image", "version"], name="mask_version_unique"),
            # A model predicts an image once per round: a re-run task cannot duplicate it.
            models.UniqueConstraint(
                fields=["image", "model_version", "round"],
                condition=Q(source="predicted"),
                name="mask_one_prediction_per_model_round",
            ),
        ]
        indexes = [
            # The few MD-drawn and imported masks among the predicted ones: round statistics
            # find the items whose candidates include the MD's own mask through it.
            models.Index(
                fields=["id"],
                condition=Q(source__in=["drawn", "imported"]),
                name="mask_manual",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.image} mask v{self.version} ({self.source})"

    @property
    def is_manual(self) -> bool:
        return self.source in (self.Source.DRAWN, self.Source.IMPORTED)


class Round(models.Model):
    class Stage(models.TextChoices):
        STAGE_I = "I", "Stage I"
        STAGE_II = "II", "Stage II"
        FINAL = "final", "Final networks"

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        REVIEWING = "reviewing", "In review"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.TRAINING, Status.REVIEWING)

    number = models.PositiveIntegerField(unique=True)
    stage = models.CharField(max_length=10, choices=Stage.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.TRAINING)
    config = models.JSONField(default=dict)
    reviewers_per_item = models.PositiveSmallIntegerField(default=1)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="rounds_started"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    failure_reason = models.TextField(blank=True)
    progress = models.JSONField(
        default=dict,
        blank=True,
        help_text='The bulk step under way, e.g. {"step": "opening", "done": 200, "total": 8800}; '
        "empty when none runs.",
    )

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.CheckConstraint(
                condition=Q(reviewers_per_item__gte=1), name="round_reviewers_at_least_one"
            ),
        ]

    def __str__(self) -> str:
        return f"Round {self.number} ({self.get_stage_display()})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE


class ReviewItem(models.Model):
    """The candidate masks offered for one image in one round.

    `uuid` is the only identifier the reviewer ever sees; candidates are known to them only by
    their shuffled labels.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for candidates"
        OPEN = "open", "Open for review"
        ADJUDICATION = "adjudication", "Tie: waiting for an admin"
        ACCEPTED = "accepted", "A candidate was accepted"
        REDRAW = "redraw", "None accepted: waiting for a redraw"
        REDRAWN = "redrawn", "Redrawn"
        CANCELLED = "cancelled", "Cancelled"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="items")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="review_items")
    fold = models.PositiveSmallIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    agreement = models.FloatField(null=True, blank=True)
    disagreement = models.FloatField(
        null=True,
        blank=True,
        help_text="1 − the mean pairwise Dice of the item's machine candidates "
        "(annotation/agreement.py), set when the item opens in a round ordered by disagreement; "
        "empty with fewer than two machine candidates.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["round_id", "id"]
        constraints = [
            models.UniqueConstraint(fields=["round", "image"], name="item_one_per_image_round"),
        ]
        indexes = [
            models.Index(fields=["round", "status"], name="item_round_status"),
            # The hand-out's two orders (selectors.claimable_items), over open items only: the
            # query walks one and stops at the first free item.
            models.Index(
                fields=["round", "id"], name="item_open_created", condition=Q(status="open")
            ),
            models.Index(
                "round",
                F("disagreement").desc(nulls_last=True),
                "id",
                name="item_open_disagreement",
                condition=Q(status="open"),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.round}: {self.image}"


class ReviewLease(models.Model):
    """An MD's hold on an item they were handed: nobody else is handed it past the round's
    quota while the hold lasts. It expires unless the open page renews it."""

    item = models.ForeignKey(ReviewItem, on_delete=models.CASCADE, related_name="leases")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="review_leases"
    )
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    skipped_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The MD skipped the item (the lease is then expired): it comes back to them "
        "only after the other items.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["item", "reviewer"], name="lease_one_per_reviewer"),
        ]
        indexes = [
            models.Index(fields=["item", "expires_at"], name="lease_item_expiry"),
            models.Index(fields=["reviewer", "expires_at"], name="lease_reviewer_expiry"),
        ]

    def __str__(self) -> str:
        return f"lease of {self.item_id} by {self.reviewer_id} until {self.expires_at}"


class Candidate(models.Model):
    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="candidates")
    mask = models.ForeignKey(Mask, on_delete=models.PROTECT, related_name="candidacies")
    label = models.CharField(max_length=2, blank=True, help_text="Shuffled when the item opens.")
    merged_into = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="merged",
        help_text="A mask identical, pixel for pixel, to another candidate's of the item: shown "
        "and picked as that candidate's label (this one keeps no label of its own).",
    )

    class Meta:
        ordering = ["item_id", "label"]
        constraints = [
            models.UniqueConstraint(fields=["item", "mask"], name="candidate_mask_once_per_item"),
            models.UniqueConstraint(
                fields=["item", "label"], condition=~Q(label=""), name="candidate_label_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.item} candidate {self.label or '?'}"


class LiveDecisions(models.Manager["Decision"]):
    """Decisions that stand: an undone pick keeps its row (revoked) but counts nowhere."""

    def get_queryset(self) -> models.QuerySet[Decision]:
        return super().get_queryset().filter(revoked_at__isnull=True)


class Decision(models.Model):
    """One reviewer's pick for one item: a candidate, or none (redraw).

    A pick undone within the grace window (annotation/services/review.py `decision_undo`) is
    never deleted: it is marked revoked. `objects` (and every related manager, such as
    `item.decisions`) sees only standing decisions, so statistics, tallies, ground truth and
    exports ignore revoked ones; `with_revoked` sees every row.
    """

    item = models.ForeignKey(ReviewItem, on_delete=models.PROTECT, related_name="decisions")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    candidate = models.ForeignKey(
        Candidate, null=True, blank=True, on_delete=models.PROTECT, related_name="decisions"
    )
    seconds = models.FloatField()
    is_adjudication = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True, help_text="When the pick was undone.")
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    with_revoked = models.Manager()
    objects = LiveDecisions()

    class Meta:
        ordering = ["id"]
        default_manager_name = "objects"
        base_manager_name = "with_revoked"
        constraints = [
            models.UniqueConstraint(
                fields=["item", "reviewer"],
                condition=Q(revoked_at__isnull=True),
                name="decision_one_per_reviewer_per_item",
            ),
            models.CheckConstraint(
                condition=Q(seconds__gte=0), name="decision_seconds_not_negative"
            ),
        ]

    def __str__(self) -> str:
        pick = self.candidate.label if self.candidate else "none"
        return f"{self.reviewer} picked {pick} on {self.item}"


class GroundTruth(models.Model):
    """An accepted mask for an image. The newest row per image is the current ground truth."""

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="ground_truths")
    mask = models.ForeignKey(Mask, on_delete=models.PROTECT, related_name="ground_truths")
    item = models.ForeignKey(
        ReviewItem, null=True, blank=True, on_delete=models.PROTECT, related_name="ground_truths"
    )
    decision = models.ForeignKey(
        Decision, null=True, blank=True, on_delete=models.PROTECT, related_name="ground_truths"
    )
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "-id"]
        get_latest_by = "id"

    def __str__(self) -> str:
        return f"ground truth of {self.image}: {self.mask}"


class Export(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Building"
        DONE = "done", "Ready"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="exports"
    )
    filters = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    file = models.FileField(upload_to="exports/", blank=True, max_length=255)
    sha256 = models.CharField(max_length=64, blank=True)
    size = models.PositiveBigIntegerField(default=0)
    image_count = models.PositiveIntegerField(default=0)
    failure_reason = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times the build was sent.")
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life: sent, started or progressed."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"export {self.uuid} ({self.status})"


class ScreeningDecision(models.Model):
    """An admin's keep or exclude of a flagged image. A new row per decision; the newest one is
    the image's screening state (Image.screening)."""

    class Choice(models.TextChoices):
        KEEP = "keep", "Keep"
        EXCLUDE = "exclude", "Exclude"

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="screening_decisions")
    decision = models.CharField(max_length=10, choices=Choice.choices)
    reason = models.TextField(blank=True)
    flags = models.JSONField(default=list, help_text="The image's flags when it was decided.")
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "-id"]

    def __str__(self) -> str:
        return f"{self.decided_by} chose {self.decision} for {self.image}"


class ImageFlag(models.TextChoices):
    UNCERTAIN = "uncertain", "Uncertain"
    POOR_QUALITY = "poor_quality", "Poor image quality"
    NOT_CXR = "not_cxr", "Not a chest X-ray"
    WRONG_CLASS = "wrong_class", "Class looks wrong"
    DEVICES = "devices", "Devices or artefacts"


class ImageComment(models.Model):
    """A comment on an image. Never edited: a correction is a new comment."""

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    text = models.TextField(max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "id"]
        indexes = [models.Index(fields=["image", "id"], name="comment_image_id")]

    def __str__(self) -> str:
        return f"comment by {self.author_id} on {self.image}"


class ImageFlagChange(models.Model):
    """One user setting or clearing one flag on an image. Never edited: the newest change per
    image, flag and user is that user's flag; an image carries a flag while any user's does."""

    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="flag_changes")
    flag = models.CharField(max_length=20, choices=ImageFlag.choices)
    is_set = models.BooleanField()
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["image_id", "id"]
        indexes = [models.Index(fields=["image", "id"], name="flagchange_image_id")]

    def __str__(self) -> str:
        return f"{self.author_id} {'set' if self.is_set else 'cleared'} {self.flag} on {self.image}"


class PacsPull(models.Model):
    """An admin's pull of CXRs from a DICOMweb server (annotation.ingest.ingest_dicomweb), run
    by a worker; its progress and report are written here for the PACS page to show."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Pulling"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="pacs_pulls"
    )
    server = models.CharField(max_length=255, help_text="dicomweb://host:port/path")
    filters = models.JSONField(default=dict, help_text="study_date, modalities, study_uids.")
    image_class = models.CharField(max_length=20, choices=ImageClass.choices)
    limit = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(
        default=dict, help_text="studies_done, studies_total, instances_done, instances_total."
    )
    result = models.JSONField(default=dict, help_text="Counts of the report.")
    report = models.TextField(blank=True)
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A lost pull is sent again by the reconciler (annotation/services/reconcile.py) as its
    # next attempt; only the attempt that claimed it (pacs_pull_run) writes to it.
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Times the pull was sent.")
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of its attempt.")
    sent_at = models.DateTimeField(null=True, blank=True, help_text="Its attempt was sent.")
    started_at = models.DateTimeField(null=True, blank=True, help_text="A worker took it.")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"pull from {self.server} ({self.status})"

    @property
    def fraction(self) -> float:
        total = self.progress.get("instances_total") or 0
        return self.progress.get("instances_done", 0) / total if total else 0.0


class ReviewOrder(models.TextChoices):
    """The order a round hands its open items out in (the round's config["order"]). Items an MD
    skipped come last to them either way."""

    CREATED = "created", "In the order the items were made"
    DISAGREEMENT = "disagreement", "Highest ensemble disagreement first"


class ImportJob(models.Model):
    """One web import: an uploaded zip (a folder, or the files sent together, zipped by the
    server) read by annotation/ingest.py on a worker. The report is kept as ingest gave it."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Importing"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    TERMINAL = (Status.DONE, Status.FAILED)

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="import_jobs"
    )
    name = models.CharField(max_length=255, help_text="What was uploaded: the zip's name.")
    file = models.FileField(upload_to="imports/", max_length=255)
    size = models.PositiveBigIntegerField(default=0, help_text="Bytes uploaded.")
    source = models.CharField(max_length=100, help_text="The data set name recorded.")
    image_class = models.CharField(
        max_length=20,
        choices=ImageClass.choices,
        blank=True,
        help_text="The class of DICOM files the layout does not list; blank for none.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    done = models.PositiveIntegerField(default=0, help_text="Files read so far.")
    total = models.PositiveIntegerField(default=0, help_text="Files to read; 0 until counted.")
    report = models.JSONField(
        default=dict,
        blank=True,
        help_text="layout, imported, duplicates, rejected [[file, reason]], flagged [[file, "
        "flags]]: annotation.ingest.IngestReport.",
    )
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"import {self.uuid} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class ReplayRun(models.Model):
    """One replay: a data set with known masks run through the real loop with simulated MDs.

    Its `config` (with the seed) is everything needed to run it again; `progress` is what the
    admin page shows while it runs; `report` holds the figures once it is done (the files:
    `folder` in the media storage, report.json, report.md and the plots).
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    dataset = models.CharField(max_length=500)
    seed = models.IntegerField(default=0)
    config = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    progress = models.JSONField(default=dict)
    report = models.JSONField(default=dict)
    folder = models.CharField(max_length=255, blank=True)
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"replay {self.pk} of {self.dataset} ({self.status})"


class ReplayTruth(models.Model):
    """An image's known mask in a replay, kept aside: never a Mask, so the loop never sees it."""

    run = models.ForeignKey(ReplayRun, on_delete=models.CASCADE, related_name="truths")
    image = models.ForeignKey(Image, on_delete=models.PROTECT, related_name="+")
    file = models.CharField(max_length=255)
    area = models.PositiveIntegerField()

    class Meta:
        ordering = ["run_id", "image_id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "image"], name="replay_truth_once_per_image")
        ]

    def __str__(self) -> str:
        return f"known mask of {self.image_id} in replay {self.run_id}"
