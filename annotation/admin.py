"""The Django admin. Masks, decisions and ground truth are the provenance of every label, and
rounds, review items and candidates change only through the services' state machine: the
admin shows them and never writes them."""

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from annotation.models import (
    Candidate,
    Decision,
    Export,
    GroundTruth,
    Image,
    Mask,
    ReviewItem,
    Round,
)
from config.readonly_admin import ReadOnlyAdmin


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "image_class", "patient_id", "status", "source"]
    list_filter = ["status", "image_class", "source"]
    search_fields = ["name", "patient_id", "sha256"]


@admin.register(Mask)
class MaskAdmin(ReadOnlyAdmin):
    list_display = ["id", "image", "version", "source", "author", "model_version", "round", "area"]
    list_filter = ["source"]
    list_select_related = ["image", "author", "model_version", "round"]


@admin.register(Round)
class RoundAdmin(ReadOnlyAdmin):
    list_display = ["number", "stage", "status", "started_by", "created_at"]


@admin.register(ReviewItem)
class ReviewItemAdmin(ReadOnlyAdmin):
    list_display = ["uuid", "round", "image", "status"]
    list_filter = ["status"]
    list_select_related = ["round", "image"]


@admin.register(Candidate)
class CandidateAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "mask"]
    list_select_related = ["item__round", "item__image", "mask__image"]


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    list_display = ["id", "item", "reviewer", "candidate", "revoked_at"]
    list_select_related = ["item__round", "item__image", "reviewer", "candidate"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Decision]:
        return Decision.with_revoked.all()  # undone picks too: they are provenance


@admin.register(GroundTruth)
class GroundTruthAdmin(ReadOnlyAdmin):
    list_display = ["id", "image", "mask", "accepted_by"]
    list_select_related = ["image", "mask__image", "accepted_by"]


admin.site.register(Export)
