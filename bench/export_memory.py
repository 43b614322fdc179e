"""Export memory and speed: peak Python memory while writing the zip, at two dataset sizes.

    .venv/bin/python bench/export_memory.py [--small 20] [--large 200] [--size 512]

Runs on a throw-away SQLite database under a temporary folder. Prints, per dataset size, the
number of images, the zip's size, the seconds taken and the peak memory the export allocated
(tracemalloc). Flat memory means the zip is streamed, not built in memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import django_env  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=20)
    parser.add_argument("--large", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="phantom side in pixels")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="maskloop-bench-")
    os.environ.update(MASKLOOP_VAR_DIR=tmp)
    django_env()
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from annotation import imaging, services, storage
    from annotation.exporting import write_zip
    from annotation.models import GroundTruth, Image, Mask
    from annotation.phantoms import make_phantom
    from annotation.selectors import export_rows

    print(f"{'images':>7} {'zip MB':>8} {'seconds':>8} {'peak MB':>8}")
    made = 0
    for target in (args.small, args.large):
        while made < target:
            p = make_phantom(made, size=args.size)
            image = services.image_create(
                data=imaging.encode_png(p.image),
                name=f"bench_{made}.png",
                source="bench",
                image_class="covid19",
            )
            mask = services.mask_create(image=image, mask=p.infection, source=Mask.Source.IMPORTED)
            GroundTruth.objects.create(image=image, mask=mask)
            made += 1
        rows = export_rows({"accepted_only": True})
        out = Path(tmp) / f"export-{target}.zip"
        tracemalloc.start()
        started = time.perf_counter()
        with out.open("wb") as fh:
            write_zip(rows, fh, opener=storage.open_file)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert Image.objects.count() == target
        print(f"{target:>7} {out.stat().st_size / 1e6:>8.1f} {seconds:>8.2f} {peak / 1e6:>8.2f}")


if __name__ == "__main__":
    main()
