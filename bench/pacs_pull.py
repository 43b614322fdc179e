"""A pull from a real Orthanc (Debian's orthanc + orthanc-dicomweb), timed: the figures of
`manage.py ingest dicomweb://…` for a PACS of generated CXRs.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
    MASKLOOP_MEDIA_ROOT=/tmp/bench-media .venv/bin/python bench/pacs_pull.py \\
        --patients 10 --studies 2 --instances 3 --size 1024

Starts Orthanc on a free loopback port with a temporary storage folder (tests/orthanc.py),
stores patients × studies × instances 12-bit DX/CR instances of size×size pixels with random
SOP Instance UIDs (plus one CT, which the default modalities leave out), then runs the pull
twice on the (migrated) database: the first fetches and imports every radiograph, the second
fetches nothing. Prints each run's report and seconds. Imports add rows: use a scratch database.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=10)
    parser.add_argument("--studies", type=int, default=2, help="per patient")
    parser.add_argument("--instances", type=int, default=3, help="per study")
    parser.add_argument("--size", type=int, default=1024, help="pixels a side")
    args = parser.parse_args()
    setup_django()
    from django.core.management import call_command
    from pydicom.uid import generate_uid

    from tests.orthanc import cxr_instance, orthanc_start

    with tempfile.TemporaryDirectory() as folder:
        orthanc = orthanc_start(Path(folder))
        try:
            t = time.perf_counter()
            stored = 0
            for p in range(args.patients):
                for s in range(args.studies):
                    study = generate_uid()
                    series = generate_uid()
                    for _ in range(args.instances):
                        data = cxr_instance(
                            patient=f"BENCH-{p:04d}",
                            study_uid=study,
                            series_uid=series,
                            sop_uid=generate_uid(),
                            modality="DX" if s % 2 == 0 else "CR",
                            study_date=f"2020{1 + s % 12:02d}15",
                            seed=stored,
                            size=args.size,
                        )
                        orthanc.upload(data)
                        stored += 1
            ct = cxr_instance(
                patient="BENCH-0000",
                study_uid=generate_uid(),
                series_uid=generate_uid(),
                sop_uid=generate_uid(),
                modality="CT",
                size=64,
            )
            orthanc.upload(ct)
            print(
                f"Orthanc {orthanc.dicomweb_url}: {stored} radiographs "
                f"({args.size}×{args.size}, 12-bit) + 1 CT stored "
                f"in {time.perf_counter() - t:.1f} s"
            )
            for run in ("first pull", "second pull (nothing new)"):
                out = io.StringIO()
                t = time.perf_counter()
                call_command(
                    "ingest", orthanc.dicomweb_url, "--class", "covid19", "--source",
                    "pacs-bench", stdout=out,
                )  # fmt: skip
                seconds = time.perf_counter() - t
                lines = out.getvalue().splitlines()
                progress = [line for line in lines if line.startswith("  studies")]
                report = [line for line in lines if not line.startswith("  studies")]
                print(f"\n== {run}: {seconds:.1f} s")
                print(f"progress lines: {len(progress)}; first {progress[0].strip()!r}, "
                      f"last {progress[-1].strip()!r}")  # fmt: skip
                print("\n".join(report))
        finally:
            orthanc.stop()


if __name__ == "__main__":
    main()
