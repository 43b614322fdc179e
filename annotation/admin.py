"""The Django admin. Masks, decisions and ground truth are the provenance of every label, and
rounds, review items and candidates change only through the services' state machine: the
admin shows them and never writes them."""

from django import forms
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import UserChangeForm
from django.db.models import Exists, OuterRef, QuerySet
from django.http import HttpRequest

from annotation import selectors
from annotation.errors import DomainError
from annotation.models import (
    Candidate,
    Decision,
    Export,
    GroundTruth,
    Image,
    Mask,
    PacsPull,
    ReviewItem,
    Round,
)
from annotation.services.accounts import roles_check
from config.readonly_admin import ReadOnlyAdmin


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "image_class", "patient_id", "status", "source"]
    list_filter = ["status", "image_class", "source"]
    search_fields = ["name", "patient_id", "sha256"]


@admin.register(Mask)
class MaskAdmin(ReadOnlyAdmin):
    """Masks of images under blind review are left out until the review is settled: an admin
    breaking a tie sees the candidates by label only (selectors.PROVENANCE_SEALED_REASON)."""

    list_display = ["id", "image", "version", "source", "author", "model_version", "round", "area"]
    list_filter = ["source"]
    list_select_related = ["image", "author", "model_version", "round"]

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(_image_under_review("image"))


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
    list_display = ["id", "item", "label", "mask", "merged_into"]
    list_select_related = ["item__round", "item__image", "mask__image", "merged_into__item"]

    def get_queryset(self, request):
        return super().get_queryset(request).exclude(_image_under_review("item__image"))


def _image_under_review(path: str) -> Exists:
    return Exists(
        ReviewItem.objects.filter(image=OuterRef(path), status__in=selectors.UNDER_REVIEW)
    )


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


@admin.register(PacsPull)
class PacsPullAdmin(ReadOnlyAdmin):
    """Pulls from a PACS are started on the PACS page (/pacs/), which shows their progress."""

    list_display = ["id", "server", "image_class", "status", "requested_by", "created_at"]
    list_filter = ["status"]


class BlindRolesUserChangeForm(UserChangeForm):
    """The user editor refuses md together with admin or data, as `user_set_roles` does."""

    def clean(self):
        cleaned = super().clean()
        groups = self.cleaned_data.get("groups")
        if groups is not None:
            try:
                roles_check(g.name for g in groups)
            except DomainError as exc:
                raise forms.ValidationError({"groups": str(exc)}) from None
        return cleaned


User = get_user_model()
admin.site.unregister(User)


@admin.register(User)
class BlindRolesUserAdmin(UserAdmin):
    form = BlindRolesUserChangeForm
