"""The static files storage with DEBUG off: WhiteNoise's compressed files with hashed names."""

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    """Hashed, compressed copies in STATIC_ROOT, written by `manage.py collectstatic`.

    Where collectstatic has not run (the tests, a checkout used without DEBUG), there is no
    manifest and pages name the files as they are instead of failing to render; WhiteNoise
    serves both names once the files are collected.
    """

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:
            return name
        return super().stored_name(name)
