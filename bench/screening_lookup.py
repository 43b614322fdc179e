"""How long the near-duplicate lookup of screening takes at QaTa scale.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
        .venv/bin/python bench/screening_lookup.py --images 120000

Adds `--images` Image rows with random 256-bit hashes (rows named screening-bench-*; **it
deletes earlier ones first**, and needs a migrated database), then prints the seconds that
`HashLookup` takes to read every hash (what one upload pays), one lookup in memory, and a
folder import's per-file cost: reading only the rows added since, then the lookup.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import setup_django  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=120_000)
    args = parser.parse_args()
    setup_django()
    from annotation.models import Image
    from annotation.services.screening import HashLookup

    Image.objects.filter(name__startswith="screening-bench-").delete()
    t = time.perf_counter()
    rows = [
        Image(
            name=f"screening-bench-{i}",
            original="originals/bench.png",
            display="display/bench.png",
            sha256=secrets.token_hex(32),
            width=512,
            height=512,
            source="bench",
            image_class="normal",
            phash=secrets.token_hex(32),
        )
        for i in range(args.images)
    ]
    Image.objects.bulk_create(rows, batch_size=5000)
    print(f"seeded {args.images} hashes: {time.perf_counter() - t:.1f} s")

    probe = secrets.token_hex(32)
    lookup = HashLookup()
    t = time.perf_counter()
    lookup.refresh()
    print(f"read every hash ({len(lookup.index)}): {time.perf_counter() - t:.3f} s")
    t = time.perf_counter()
    for _ in range(100):
        lookup.index.near(probe, 12)
    print(f"one lookup in memory: {(time.perf_counter() - t) * 10:.2f} ms")
    t = time.perf_counter()
    for _ in range(100):
        lookup.near(probe, 12)  # refresh: the rows added since (none), then the lookup
    print(f"per file in a folder import: {(time.perf_counter() - t) * 10:.2f} ms")
    Image.objects.filter(name__startswith="screening-bench-").delete()


if __name__ == "__main__":
    main()
