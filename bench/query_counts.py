"""SQL queries per reviewer request at 1 K and at 120 K images, side by side: they must be equal
(no request's query count may grow with the data).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/maskloop_bench \\
        .venv/bin/python bench/query_counts.py

Seeds the database twice with bench/seed_scale.py (**it is erased first**), then signs an MD
in with Django's test client and counts the queries of each request of a review (the first
`next`, the prefetch `next?after=`, the item, its CXR and a candidate overlay, the decision,
and `next` again) with CaptureQueriesContext.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.benchenv import django_env  # noqa: E402

SIZES = {  # images, COVID-19, items
    "1K": (1_000, 75, 73),
    "120K": (120_000, 9_000, 8_800),
}


def _requests() -> list[tuple[str, int, int]]:
    """One MD's review, request by request: (name, queries, status)."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(get_user_model().objects.get(username="md01"))
    counts = []

    def run(name: str, method: str, url: str, **kwargs) -> object:
        with CaptureQueriesContext(connection) as ctx:
            response = getattr(client, method)(url, **kwargs)
        counts.append((name, len(ctx.captured_queries), response.status_code))
        return response

    item = run("next", "get", "/api/review-items/next/").json()
    run("next (prefetch)", "get", f"/api/review-items/next/?after={item['id']}")
    run("item", "get", f"/api/review-items/{item['id']}/")
    run("image png", "get", item["image_url"] + "?max=512")
    label = item["candidates"][0]["label"]
    run("candidate png", "get", item["candidates"][0]["overlay_url"] + "&max=512")
    run("lease renew", "post", f"/api/review-items/{item['id']}/lease/")
    run(
        "decision",
        "post",
        item["decision_url"],
        data={"choice": label, "seconds": 4},
        content_type="application/json",
    )
    run("next (held)", "get", "/api/review-items/next/")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        raise SystemExit("set DATABASE_URL to a PostgreSQL database (it is erased first)")
    django_env()
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
    import django

    django.setup()
    from django.core.management import call_command

    from bench.seed_scale import seed

    call_command("migrate", verbosity=0)
    table: dict[str, list[tuple[str, int, int]]] = {}
    for size, (images, covid, items) in SIZES.items():
        started = time.perf_counter()
        seed(images=images, covid=covid, items=items, candidates=5, mds=2, log=lambda *a: None)
        took = time.perf_counter() - started
        print(f"seeded {size} ({images} images, {items} items) in {took:.0f} s")
        table[size] = _requests()

    names = [name for name, _, _ in table["1K"]]
    print(f"\n{'request':<18}" + "".join(f"{s + ' images':>14}" for s in SIZES) + "   equal")
    for k, name in enumerate(names):
        cells = [table[s][k] for s in SIZES]
        counts = [c[1] for c in cells]
        shown = "".join(f"{f'{c[1]} ({c[2]})':>14}" for c in cells)
        print(f"{name:<18}{shown}   {'yes' if len(set(counts)) == 1 else 'NO'}")
    print("(queries per request; the HTTP status in brackets)")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
