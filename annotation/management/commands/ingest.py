from django.core.management.base import BaseCommand, CommandError

from annotation.errors import DomainError
from annotation.ingest import ingest_folder


class Command(BaseCommand):
    help = "Import a folder of CXRs (QaTa-COV19, COVID-QU-Ex, or images + CSV)."

    def add_arguments(self, parser):
        parser.add_argument("folder")
        parser.add_argument("--source", help="dataset name to record (default: folder name)")

    def handle(self, folder, source=None, **options):
        try:
            report = ingest_folder(folder, source=source)
        except DomainError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(report.summary())
