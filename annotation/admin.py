from django.contrib import admin

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


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "image_class", "patient_id", "status", "source"]
    list_filter = ["status", "image_class", "source"]
    search_fields = ["name", "patient_id", "sha256"]


@admin.register(Mask)
class MaskAdmin(admin.ModelAdmin):
    list_display = ["id", "image", "version", "source", "author", "model_version", "round", "area"]
    list_filter = ["source"]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["number", "stage", "status", "started_by", "created_at"]


for model in (ReviewItem, Candidate, Decision, GroundTruth, Export):
    admin.site.register(model)
