"""Export into object storage at scale: our streamed export vs plain boto3 uploads of a zip.

    .venv/bin/python bench/s3_export.py [--images 10000] [--size 128]

Starts SeaweedFS (the tests' `weed server -s3`, see tests/objectstore.py) and a throw-away
SQLite database under a temporary folder, with maskloop configured for S3 exactly as in
production (MASKLOOP_S3_*). Seeds N phantom images and N masks straight into the bucket and
bulk-inserts their rows. Then, each in a fresh child process (so peak memory is its own):

  streamed     services.export_build: reads every image and mask from S3 and streams the zip
               back into S3 as a multipart upload, hashing on the way (what the worker does)
  temp+upload  the former way: write_zip to a local temporary file, then boto3 upload_file
  upload_file  boto3 upload_file of the finished zip alone (no reading, no zipping)

Prints, per method: seconds, zip MB/s, peak RSS of the child (ru_maxrss) and how much it grew
over the child's RSS just before the timed part.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.benchenv import django_env  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def django_setup() -> None:
    django_env()
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()


def child(mode: str, arg: str) -> None:
    django_setup()

    from django.conf import settings

    from annotation import services
    from annotation.exporting import write_zip
    from annotation.models import Export
    from annotation.selectors import export_rows
    from tests.objectstore import ObjectStore

    store = ObjectStore(
        settings.MASKLOOP_S3_ENDPOINT_URL,
        os.environ["MASKLOOP_S3_BUCKET"],
        os.environ["MASKLOOP_S3_ACCESS_KEY"],
        os.environ["MASKLOOP_S3_SECRET_KEY"],
    )
    names = contextlib.nullcontext()  # the export rows name stored files already
    result: dict[str, object] = {}
    if mode == "streamed":
        export = Export.objects.create(requested_by_id=1, filters={"accepted_only": True})
        with names:
            base = rss_mb()
            started = time.perf_counter()
            export = services.export_build(export=export)
            result["seconds"] = time.perf_counter() - started
        result.update(name=export.file.name, size=export.size, sha256=export.sha256)
    elif mode == "temp+upload":
        from annotation.services.exports import _open_source

        with names:
            rows = export_rows({"accepted_only": True})
        base = rss_mb()
        started = time.perf_counter()
        with tempfile.NamedTemporaryFile(suffix=".zip") as tmp:
            write_zip(rows, tmp, opener=_open_source)
            tmp.flush()
            store.client().upload_file(tmp.name, store.bucket, "bench/temp-upload.zip")
            result["size"] = os.path.getsize(tmp.name)
        result["seconds"] = time.perf_counter() - started
    else:  # upload_file
        base = rss_mb()
        started = time.perf_counter()
        store.client().upload_file(arg, store.bucket, "bench/upload-file.zip")
        result["seconds"] = time.perf_counter() - started
        result["size"] = os.path.getsize(arg)
    result.update(base_mb=base, peak_mb=peak_mb())
    print(json.dumps(result))


def seed(n: int, size: int, store) -> None:
    import numpy as np
    from django.contrib.auth import get_user_model

    from annotation import imaging
    from annotation.models import GroundTruth, Image, Mask
    from annotation.phantoms import make_phantom

    get_user_model().objects.create_user(username="bench", password="bench-pass")
    bases = [make_phantom(seed, size=size) for seed in range(16)]
    client = store.client()

    def one(i: int) -> tuple[Image, str, str]:
        phantom = bases[i % len(bases)]
        gray = phantom.image.copy()
        gray.flat[:4] = np.frombuffer(i.to_bytes(4, "big"), dtype=np.uint8)  # unique bytes
        data = imaging.encode_png(gray)
        mask = imaging.encode_mask(phantom.infection)
        digest = hashlib.sha256(data).hexdigest()
        original = f"originals/{digest[:2]}/{digest}.png"
        mask_name = f"masks/{i}/v1-{digest[:12]}.png"
        client.put_object(Bucket=store.bucket, Key=original, Body=data)
        client.put_object(Bucket=store.bucket, Key=mask_name, Body=mask)
        image = Image(
            name=f"bench_{i}.png",
            original=original,
            display=original,
            sha256=digest,
            width=size,
            height=size,
            source="bench",
            image_class="covid19",
            patient_id=f"P{i // 3}",
            status=Image.Status.ACCEPTED,
        )
        return image, mask_name, hashlib.sha256(mask).hexdigest()

    with ThreadPoolExecutor(16) as pool:
        made = list(pool.map(one, range(n)))
    images = Image.objects.bulk_create([m[0] for m in made], batch_size=2000)
    masks = Mask.objects.bulk_create(
        [
            Mask(
                image=image,
                version=1,
                file=name,
                sha256=sha,
                area=1,
                source=Mask.Source.IMPORTED,
            )
            for image, (_, name, sha) in zip(images, made, strict=True)
        ],
        batch_size=2000,
    )
    GroundTruth.objects.bulk_create(
        [GroundTruth(image=m.image, mask=m) for m in masks], batch_size=2000
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=128, help="phantom side in pixels")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from tests.objectstore import seaweedfs

    tmp = Path(tempfile.mkdtemp(prefix="maskloop-s3-bench-"))
    with seaweedfs(tmp / "seaweedfs") as store:
        env = {**os.environ, **store.env(), "MASKLOOP_VAR_DIR": str(tmp / "var")}
        env.pop("DATABASE_URL", None)
        os.environ.update(env)
        django_setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        seed(args.images, args.size, store)
        print(
            f"seeded {args.images} images + {args.images} masks ({args.size} px) into SeaweedFS "
            f"in {time.perf_counter() - started:.0f} s"
        )

        def run(mode: str, arg: str = "-") -> dict:
            out = subprocess.run(
                [sys.executable, __file__, "--child", mode, arg],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
            return json.loads(out.stdout.strip().splitlines()[-1])

        results = {"streamed": run("streamed")}
        zip_path = tmp / "export.zip"
        store.client().download_file(store.bucket, results["streamed"]["name"], str(zip_path))
        assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == results["streamed"]["sha256"]
        results["temp+upload"] = run("temp+upload")
        results["upload_file"] = run("upload_file", str(zip_path))

        print(f"zip: {results['streamed']['size'] / 1e6:.1f} MB, {args.images} images + masks")
        print(f"{'method':<12} {'seconds':>8} {'MB/s':>7} {'peak RSS MB':>12} {'grew MB':>8}")
        for mode, r in results.items():
            print(
                f"{mode:<12} {r['seconds']:>8.1f} {r['size'] / 1e6 / r['seconds']:>7.1f} "
                f"{r['peak_mb']:>12.0f} {r['peak_mb'] - r['base_mb']:>8.0f}"
            )


if __name__ == "__main__":
    main()
