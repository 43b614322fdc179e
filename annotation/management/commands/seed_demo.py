from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from annotation.demo import DEMO_ACCOUNTS, demo_seed


class Command(BaseCommand):
    help = "Create demo accounts and a synthetic CXR dataset with some MD-drawn masks (idempotent)."

    def add_arguments(self, parser):
        parser.add_argument("--covid", type=int, default=24)
        parser.add_argument("--control", type=int, default=6)
        parser.add_argument("--md-masks", type=int, default=12)

    def handle(self, covid, control, md_masks, **options):
        folder = Path(settings.VAR_DIR) / "demo-data"
        report = demo_seed(folder, n_covid=covid, n_control=control, md_masks=md_masks)
        self.stdout.write(report.summary())
        self.stdout.write("\nDemo accounts (username / password / role):")
        for username, password, roles in DEMO_ACCOUNTS:
            self.stdout.write(f"  {username:6s} / {password:16s} / {', '.join(roles)}")
