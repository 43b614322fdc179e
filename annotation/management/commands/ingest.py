from django.core.management.base import BaseCommand, CommandError

from annotation.dicomweb import PacsFilters, is_dicomweb_url
from annotation.errors import DomainError
from annotation.ingest import PullProgress, ingest_dicomweb, ingest_folder


class Command(BaseCommand):
    help = (
        "Import a folder of CXRs (QaTa-COV19, COVID-QU-Ex, images + CSV, or DICOM files), or "
        "pull them from a DICOMweb server: dicomweb://host:port/path (dicomwebs:// for HTTPS)."
    )

    def add_arguments(self, parser):
        parser.add_argument("folder", help="a folder, or dicomweb://host:port/path of a PACS")
        parser.add_argument("--source", help="dataset name to record (default: folder name)")
        parser.add_argument(
            "--class",
            dest="image_class",
            help="class of the DICOM files the layout does not list, and of every image pulled "
            "from a DICOMweb server (covid19, non_covid, normal)",
        )
        pacs = parser.add_argument_group("DICOMweb pull (QIDO-RS search, WADO-RS fetch)")
        pacs.add_argument("--study-date", default="", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
        pacs.add_argument(
            "--modality", default="", help="comma-separated, e.g. CR,DX (default: CR,DX,DR,RG)"
        )
        pacs.add_argument("--study-uid", default="", help="comma-separated Study Instance UIDs")
        pacs.add_argument(
            "--limit", type=int, help="fetch at most this many new instances, then stop"
        )

    def handle(self, folder, source=None, image_class=None, **options):
        if is_dicomweb_url(folder):
            return self._pull(folder, source, image_class, options)
        try:
            report = ingest_folder(folder, source=source, image_class=image_class)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())

    def _pull(self, url, source, image_class, options):
        if not image_class:
            raise CommandError(
                "a pull from a DICOMweb server needs the class of its images (--class): "
                "DICOM carries none"
            )
        try:
            filters = PacsFilters.parse(
                study_date=options["study_date"],
                modalities=options["modality"],
                study_uids=options["study_uid"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None

        def progress(p: PullProgress) -> None:
            self.stdout.write(f"  {p}")

        try:
            report = ingest_dicomweb(
                url,
                image_class=image_class,
                filters=filters,
                source=source,
                limit=options.get("limit"),
                progress=progress,
            )
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())
        if report.error:
            raise CommandError(report.error)
