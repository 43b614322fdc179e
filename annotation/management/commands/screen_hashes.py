"""`manage.py screen_hashes`: the perceptual hashes of images imported before screening."""

from django.core.management.base import BaseCommand

from annotation.services.screening import images_hash_backfill


class Command(BaseCommand):
    help = (
        "Hash the images imported before screening existed, so that new imports are compared "
        "with them for near-duplicates (flags nothing; safe to run again)."
    )

    def handle(self, **options):
        self.stdout.write(f"hashed: {images_hash_backfill()}")
