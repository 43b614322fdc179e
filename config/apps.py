from django.apps import AppConfig


class MaskloopConfig(AppConfig):
    """Holds what every app shares: the outbox of Celery messages (config/models.py)."""

    name = "config"
    label = "maskloop"
    verbose_name = "maskloop"
    default_auto_field = "django.db.models.BigAutoField"
