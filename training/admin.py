from django.contrib import admin

from training.models import ModelVersion, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "round", "arch", "encoder", "fold", "status", "epoch", "loss"]
    list_filter = ["status", "arch"]


admin.site.register(ModelVersion)
