"""Training runs (jobs on the `training` queue) and the model versions they produce."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class TrainingRun(models.Model):
    """One network's job in a round: train, then predict (or, in a final round, evaluate).

    The row is the worker's whole work order: `inputs` names the stored files it trains on
    and predicts, so a worker on another host needs only the database and the media storage.
    Its status changes only through `annotation.services.states` (the round's state machine);
    the worker writes its progress here and reports the rest by Celery task name.
    """

    class Kind(models.TextChoices):
        SEGMENTATION = "segmentation", "Segmentation network"
        CLASSIFIER = "classifier", "Grad-CAM classifier"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        TRAINING = "training", "Training"
        PREDICTING = "predicting", "Predicting"
        SUCCEEDED = "succeeded", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    round = models.ForeignKey(
        "annotation.Round", on_delete=models.PROTECT, related_name="training_runs"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.SEGMENTATION)
    arch = models.CharField(max_length=20, blank=True, help_text="Blank for a classifier.")
    encoder = models.CharField(max_length=20)
    fold = models.PositiveSmallIntegerField(null=True, blank=True)
    config = models.JSONField(default=dict)
    train_image_ids = models.JSONField(default=list, help_text="[image id, mask id] pairs.")
    target_image_ids = models.JSONField(default=list)
    inputs = models.JSONField(
        default=dict,
        help_text="Stored file names by id: images, masks, references (the mask a target is "
        "measured against), and which images are COVID-19.",
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    epoch = models.PositiveIntegerField(default=0)
    epochs = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    loss_history = models.JSONField(default=list)
    predicted = models.PositiveIntegerField(default=0)
    failure_reason = models.TextField(blank=True)
    attempt = models.PositiveSmallIntegerField(
        default=0,
        help_text="The delivery that owns the run; the reconciler bumps it to re-send a lost one.",
    )
    worker = models.CharField(
        max_length=200, blank=True, help_text="The worker whose attempt holds the run."
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, help_text="Last sign of life: sent, claimed or progressed."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["round_id", "id"]

    def __str__(self) -> str:
        fold = f" fold {self.fold}" if self.fold is not None else ""
        return f"{self.network}{fold} ({self.status})"

    @property
    def network(self) -> str:
        return f"{self.arch or self.kind}/{self.encoder}"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def progress(self) -> float:
        """Share of the whole job done: training is 80 %, predicting the held-out images 20 %."""
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        total = max(self.epochs * max(self.steps, 1), 1)
        done = max(self.epoch - 1, 0) * max(self.steps, 1) + self.step
        trained = min(done / total, 1.0) if self.status != self.Status.QUEUED else 0.0
        if self.status == self.Status.PREDICTING:
            targets = max(len(self.target_image_ids), 1)
            return 0.8 + 0.2 * min(self.predicted / targets, 1.0)
        return 0.8 * trained


class ModelVersion(models.Model):
    """Trained weights with everything needed to reproduce them."""

    run = models.OneToOneField(TrainingRun, on_delete=models.PROTECT, related_name="model_version")
    arch = models.CharField(max_length=20)
    encoder = models.CharField(max_length=20)
    config = models.JSONField(default=dict)
    weights = models.FileField(upload_to="models/", max_length=255)
    metrics = models.JSONField(default=dict)
    data_version = models.CharField(max_length=100)
    code_version = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"model v{self.pk} {self.arch or 'classifier'}/{self.encoder}"


class PretrainedEncoder(models.Model):
    """An encoder pretrained without labels on the platform's CXRs (masked-image modelling,
    training.nets.pretrain): the job on the `training` queue and, once it succeeded, the
    encoder weights file that a round may start its networks from."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        TRAINING = "training", "Training"
        SUCCEEDED = "succeeded", "Done"
        FAILED = "failed", "Failed"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED)

    encoder = models.CharField(max_length=20)
    config = models.JSONField(default=dict, help_text="training.nets.pretrain.PretrainConfig.")
    preset = models.CharField(max_length=20, blank=True)
    image_ids = models.JSONField(default=list)
    inputs = models.JSONField(default=dict, help_text="Stored file names by image id.")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    epoch = models.PositiveIntegerField(default=0)
    epochs = models.PositiveIntegerField(default=0)
    step = models.PositiveIntegerField(default=0)
    steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    loss_history = models.JSONField(default=list)
    failure_reason = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    weights = models.FileField(upload_to="encoders/", max_length=255, blank=True)
    metrics = models.JSONField(default=dict)
    data_version = models.CharField(max_length=100, blank=True)
    code_version = models.CharField(max_length=64, blank=True)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # A pretraining whose worker died is sent again by the reconciler as its next attempt;
    # only the attempt that claimed it (pretrain_execute) writes to it.
    attempts = models.PositiveSmallIntegerField(default=1, help_text="Times it was sent.")

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"pretrained encoder #{self.pk} {self.encoder} ({self.status})"

    @property
    def progress(self) -> float:
        if self.status == self.Status.SUCCEEDED:
            return 1.0
        total = max(self.epochs * max(self.steps, 1), 1)
        return min((max(self.epoch - 1, 0) * max(self.steps, 1) + self.step) / total, 1.0)
