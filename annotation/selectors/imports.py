"""Web imports: a job's report laid out for the page, and the limits in words."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from annotation.models import ImportJob


def import_report(job: ImportJob) -> dict[str, Any]:
    """The job's ingest report as the page shows it: counts, then each file by outcome."""
    report = job.report or {}
    imported = list(report.get("imported", []))
    duplicates = list(report.get("duplicates", []))
    rejected = [{"file": f, "reason": r} for f, r in report.get("rejected", [])]
    flagged = [{"file": f, "flags": r} for f, r in report.get("flagged", [])]
    return {
        "layout": report.get("layout", ""),
        "imported": imported,
        "duplicates": duplicates,
        "rejected": rejected,
        "flagged": flagged,
        "counts": {
            "imported": len(imported),
            "duplicates": len(duplicates),
            "rejected": len(rejected),
            "flagged": len(flagged),
        },
    }


def import_limits_text() -> dict[str, str]:
    """The import's limits (the MASKLOOP_IMPORT_* and MASKLOOP_MAX_UPLOAD_BYTES settings)."""

    def mib(n: int) -> str:
        return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"

    return {
        "upload": mib(settings.MASKLOOP_IMPORT_MAX_UPLOAD_BYTES),
        "unpacked": mib(settings.MASKLOOP_IMPORT_MAX_UNPACKED_BYTES),
        "files": f"{settings.MASKLOOP_IMPORT_MAX_FILES:,}",
        "file": mib(settings.MASKLOOP_MAX_UPLOAD_BYTES),
        "max_files_sent": f"{settings.DATA_UPLOAD_MAX_NUMBER_FILES}",
    }
