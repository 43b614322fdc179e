from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import m2m_changed

        from annotation.services.accounts import groups_guard

        # md never with admin or data, by whatever path groups are given (see groups_guard).
        m2m_changed.connect(
            groups_guard,
            sender=get_user_model().groups.through,
            dispatch_uid="annotation.groups_guard",
        )
