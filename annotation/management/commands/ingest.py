from django.core.management.base import BaseCommand, CommandError

from annotation.errors import DomainError
from annotation.ingest import ingest_folder


class Command(BaseCommand):
    help = "Import a folder of CXRs (QaTa-COV19, COVID-QU-Ex, images + CSV, or DICOM files)."

    def add_arguments(self, parser):
        parser.add_argument("folder")
        parser.add_argument("--source", help="dataset name to record (default: folder name)")
        parser.add_argument(
            "--class",
            dest="image_class",
            help="class of the DICOM files the layout does not list (covid19, non_covid, normal)",
        )

    def handle(self, folder, source=None, image_class=None, **options):
        try:
            report = ingest_folder(folder, source=source, image_class=image_class)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())
