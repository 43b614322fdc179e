from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from annotation import storage
from annotation.dicomweb import PacsServer, is_dicomweb_url, stow_export
from annotation.models import Export


class Command(BaseCommand):
    help = (
        "Store the DICOM-SEG objects of a dicom-seg export (and the Secondary Captures they "
        "reference) on a DICOMweb server with STOW-RS: dicomweb://host:port/path."
    )

    def add_arguments(self, parser):
        parser.add_argument("export", help="the export's UUID, or the path of its zip")
        parser.add_argument("server", help="dicomweb://host:port/path (dicomwebs:// for HTTPS)")

    def handle(self, export, server, **options):
        from django.conf import settings

        if not is_dicomweb_url(server):
            raise CommandError(
                f"{server!r} is not a DICOMweb URL: expected dicomweb://host:port/path"
            )
        try:
            pacs = PacsServer(server, attempts=settings.MASKLOOP_DICOMWEB_ATTEMPTS)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if settings.MASKLOOP_PATIENT_ID_SALT:
            self.stderr.write(
                "note: patient ids are salted (MASKLOOP_PATIENT_ID_SALT): the SEGs carry the "
                "salted id, so the server files them under another patient than their source"
            )

        def progress(done: int, total: int) -> None:
            self.stdout.write(f"  files {done}/{total}")

        try:
            with _open(export) as archive:
                report = stow_export(pacs, archive, progress=progress)
        except (ValueError, OSError) as exc:
            raise CommandError(f"{export}: {exc}") from None
        self.stdout.write(report.summary())
        if report.stopped:
            raise CommandError(report.stopped)


def _open(export: str):
    path = Path(export)
    if path.is_file():
        return path.open("rb")
    row = Export.objects.filter(uuid=export).first() if _is_uuid(export) else None
    if row is None:
        raise CommandError(f"{export!r} is neither a zip file nor the UUID of an export")
    if row.status != Export.Status.DONE:
        raise CommandError(f"export {export} is {row.get_status_display().lower()}, not ready")
    if row.filters.get("format") != "dicom-seg":
        raise CommandError(f"export {export} is not in the dicom-seg format")
    return storage.local_copy(row.file.name).open("rb")


def _is_uuid(text: str) -> bool:
    import uuid

    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
