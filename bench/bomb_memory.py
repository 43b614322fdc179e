"""Decompression bombs: what refusing each one costs, in memory and time.

    .venv/bin/python bench/bomb_memory.py

Builds each bomb small (the generators of tests/security), then decodes it the way an upload or
an import does, and prints the file's size, the answer, the seconds taken and the peak memory:
Python's (tracemalloc) and the process's resident set above where it started (VmHWM, which
counts what zlib, Pillow and pydicom allocate in C). No database is needed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402


def main() -> None:
    setup_django()
    from annotation import imaging
    from inference import analysis
    from tests.security import badfiles as bad

    cases = [
        ("png 16-bit 9000x9000", bad.png_of_zeros(9000, 9000, 16), "image"),
        ("png 8-bit 7000x7000", bad.png_of_zeros(7000, 7000), "image"),
        ("jpeg claiming 60000x60000", bad.jpeg_lying_size(60000, 60000), "image"),
        ("mask png 9000x9000 for 64x64", bad.png_of_zeros(9000, 9000), "mask"),
        ("mask png 4000x4000 for 64x64", bad.png_of_zeros(4000, 4000), "mask"),
        ("dicom deflated 9000x9000", bad.dicom(9000, 9000, deflated=True), "upload"),
        (
            "dicom deflated 64x64 inflating to 60 MB",
            bad.dicom(64, 64, deflated=True, pixel_bytes=60 * bad.MB),
            "upload",
        ),
        ("dicom 65535x65535", bad.dicom(65535, 65535, pixel_bytes=100), "upload"),
    ]
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'case':42} {'file':>9} {'seconds':>8} {'python MB':>10} {'process MB':>11}  answer")
    for name, data, kind in cases:
        with bad.PeakMemory() as memory:
            started = time.perf_counter()
            try:
                if kind == "image":
                    imaging.decode_image(data, what="the file", limits=analysis.upload_limits())
                elif kind == "mask":
                    imaging.decode_mask(data, width=64, height=64)
                else:
                    analysis.decode_upload(data, "scan.dcm")
                answer = "accepted (!)"
            except imaging.InvalidImageError as exc:
                answer = str(exc)
            seconds = time.perf_counter() - started
        print(
            f"{name:42} {len(data) / 1024:7.0f}KB {seconds:8.3f} "
            f"{memory.python / bad.MB:10.1f} {memory.process / bad.MB:11.1f}  {answer[:70]}"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
