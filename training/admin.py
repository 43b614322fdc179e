from django.contrib import admin

from config.readonly_admin import ReadOnlyAdmin
from training.models import ModelVersion, PretrainedEncoder, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    """Read-only: a run's status changes only through annotation's state machine."""

    list_display = ["id", "round", "arch", "encoder", "fold", "status", "epoch", "loss"]
    list_filter = ["status", "arch"]
    list_select_related = ["round"]


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    """Read-only: a model version is the provenance of every mask it predicted."""

    list_display = ["id", "run", "arch", "encoder", "created_at"]


@admin.register(PretrainedEncoder)
class PretrainedEncoderAdmin(ReadOnlyAdmin):
    """Read-only: rounds name the encoder files they started from."""

    list_display = ["id", "encoder", "preset", "status", "epoch", "loss", "created_at"]
    list_filter = ["status", "encoder"]
