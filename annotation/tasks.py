"""Celery tasks of the `default` queue."""

from celery import shared_task

from annotation import services
from annotation.models import Export


@shared_task(acks_late=True)
def export_build(export_id: int) -> str:
    try:
        export = services.export_build(export=Export.objects.get(pk=export_id))
    except Exception as exc:
        services.export_fail(export_id=export_id, reason=f"{type(exc).__name__}: {exc}")
        raise
    return f"export {export.uuid}: {export.size} bytes"
