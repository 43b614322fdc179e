"""annotation.storage on a real object store (SeaweedFS's S3 API) and on the local folder."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings
from django.core.files.storage import default_storage

from annotation import imaging, services, storage
from annotation.models import Export

pytest_plugins = ["tests.objectstore"]  # the SeaweedFS fixtures: object_store, s3_storage
pytestmark = pytest.mark.django_db


def png(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    return imaging.encode_png(rng.integers(0, 255, (size, size), dtype=np.uint8))


def test_files_round_trip_through_the_object_store(s3_storage):
    name = storage.store("originals/ab/abc.png", png(1))
    assert name.startswith("originals/ab/abc-") and name.endswith(".png")
    assert storage.store("originals/ab/abc.png", png(1)) != name  # every save: a fresh name
    assert storage.exists(name) and storage.read(name) == png(1)
    with storage.open_file(name) as fh:
        assert fh.read() == png(1)
    keys = s3_storage.client().list_objects_v2(Bucket=s3_storage.bucket)["Contents"]
    assert any(k["Key"].endswith("/" + name) for k in keys)  # really in the bucket
    storage.delete_quietly([name, "originals/never-stored.png"])
    assert not storage.exists(name)


def test_display_copies_are_made_once_and_then_read_from_the_object_store(s3_storage):
    name = storage.store("display/ab/abc.png", png(2, size=700))
    small = storage.display_copy(name, 512)
    assert imaging.decode_image(small).gray.shape == (512, 512)
    cached = f"display-cache/512/{name}"
    assert storage.exists(cached)
    default_storage.delete(name)  # the copy is served without touching the original again
    assert storage.display_copy(name, 512) == small


def test_local_copy_downloads_once_into_the_cache(s3_storage):
    name = storage.store("display/cd/cde.png", png(3))
    path = storage.local_copy(name)
    assert path.is_file() and path.read_bytes() == png(3)
    assert path.is_relative_to(Path(settings.MASKLOOP_CACHE_DIR))
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    default_storage.delete(name)  # stored names never change: the copy stays valid
    assert storage.local_copy(name) == path
    with pytest.raises(FileNotFoundError):
        storage.local_copy("display/cd/never-stored.png")


def test_local_copy_is_the_stored_file_itself_on_a_local_folder(settings):
    name = storage.store("display/ef/efg.png", png(4))
    path = storage.local_copy(name)
    assert path == Path(settings.MEDIA_ROOT) / name
    assert not Path(settings.MASKLOOP_CACHE_DIR).joinpath(name).exists()
    with pytest.raises(FileNotFoundError):
        storage.local_copy("display/ef/never-stored.png")


@pytest.mark.parametrize("empty", [None, ""])
def test_an_empty_file_field_reads_as_a_missing_file_not_a_folder(empty):
    """A file field's `.name` is None or "" when it holds no file: every reader says so,
    instead of opening MEDIA_ROOT or caching a display copy under "None"."""
    for read in (storage.read, storage.open_file, storage.local_copy):
        with pytest.raises(FileNotFoundError, match="no file is stored"):
            read(empty)
    with pytest.raises(FileNotFoundError, match="no file is stored"):
        storage.display_copy(empty, 512)
    with pytest.raises(FileNotFoundError, match="no file is stored"):
        storage.download_response(empty, "x.zip")
    assert not default_storage.exists("display-cache/512/None")


def _checkpoints(folder: Path) -> None:
    (folder / "fold-0").mkdir(parents=True)
    (folder / "fold-0" / "best.weights.h5").write_bytes(b"w" * 3000)
    (folder / "history.json").write_text('{"epoch": 1}')


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_checkpoint_folders_go_up_and_come_back_on_another_host(backend, request, tmp_path):
    if backend == "s3":
        request.getfixturevalue("s3_storage")
    first, second = tmp_path / "host-a", tmp_path / "host-b"
    _checkpoints(first)
    prefix = "runs/7/checkpoints"
    assert storage.upload_dir(first, prefix) == [
        f"{prefix}/fold-0/best.weights.h5",
        f"{prefix}/history.json",
    ]
    assert storage.upload_dir(first, prefix) == []  # nothing changed, nothing sent

    fetched = storage.download_dir(prefix, second)
    assert sorted(p.relative_to(second).as_posix() for p in fetched) == [
        "fold-0/best.weights.h5",
        "history.json",
    ]
    assert (second / "fold-0" / "best.weights.h5").read_bytes() == b"w" * 3000
    assert storage.upload_dir(second, prefix) == []  # what came down does not go back up

    # A checkpoint rewritten with the same size: replaced in storage, fetched again.
    (first / "fold-0" / "best.weights.h5").write_bytes(b"v" * 3000)
    os.utime(first / "fold-0" / "best.weights.h5", ns=(1, 2_000_000_000))
    assert storage.upload_dir(first, prefix) == [f"{prefix}/fold-0/best.weights.h5"]
    assert storage.read(f"{prefix}/fold-0/best.weights.h5") == b"v" * 3000
    assert len(storage.download_dir(prefix, second)) == 2
    assert (second / "fold-0" / "best.weights.h5").read_bytes() == b"v" * 3000
    # Host B carries on training from there: only what it changes goes up.
    (second / "history.json").write_text('{"epoch": 2}')
    assert storage.upload_dir(second, prefix) == [f"{prefix}/history.json"]
    assert storage.download_dir("runs/8/checkpoints", tmp_path / "host-c") == []


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_a_stream_larger_than_one_upload_part_arrives_whole_and_a_failed_one_not_at_all(
    backend, request
):
    if backend == "s3":
        request.getfixturevalue("s3_storage")
    chunk = os.urandom(1 << 20)
    with storage.stream_to("exports/big.bin") as out:
        for _ in range(12):  # 12 MB: three multipart parts of 5 MB
            out.write(chunk)
    assert out.size == 12 << 20
    assert out.sha256.hexdigest() == hashlib.sha256(chunk * 12).hexdigest()
    assert hashlib.sha256(storage.read("exports/big.bin")).hexdigest() == out.sha256.hexdigest()

    with pytest.raises(RuntimeError), storage.stream_to("exports/broken.bin") as out:
        out.write(chunk * 6)
        raise RuntimeError("the export failed half-way")
    assert not storage.exists("exports/broken.bin")


def _export(reviewing_round, md) -> Export:
    rnd = reviewing_round(images=3)
    for item in rnd.items.all():
        services.decision_create(item=item, reviewer=md, choice="B", seconds=1)
    export = Export.objects.create(requested_by=md, filters={"accepted_only": True})
    return services.export_build(export=export)


def _check_zip(data: bytes, export: Export) -> None:
    assert hashlib.sha256(data).hexdigest() == export.sha256 and len(data) == export.size
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        assert manifest["images"] == 3
        for name, digest in manifest["files"].items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest, name


def test_an_export_streams_into_the_object_store_and_downloads_from_a_presigned_url(
    s3_storage, reviewing_round, md
):
    export = _export(reviewing_round, md)
    assert export.status == Export.Status.DONE and export.file.name.startswith("exports/")
    response = storage.download_response(
        export.file.name, "maskloop-export-x.zip", content_type="application/zip"
    )
    assert response.status_code == 302
    url = response["Location"]
    assert url.startswith(s3_storage.endpoint_url) and "X-Amz-Signature=" in url
    with urllib.request.urlopen(url, timeout=30) as fetched:
        assert fetched.headers["Content-Disposition"] == (
            'attachment; filename="maskloop-export-x.zip"'
        )
        assert fetched.headers["Content-Type"] == "application/zip"
        data = fetched.read()
    _check_zip(data, export)


def test_presigned_urls_name_the_public_address_when_one_is_set(s3_storage, settings):
    settings.MASKLOOP_S3_PUBLIC_URL = "https://files.hospital.example"
    name = storage.store("exports/x.zip", b"zip")
    url = storage.download_response(name, "x.zip")["Location"]
    assert url.startswith("https://files.hospital.example/")


def test_an_export_on_the_local_folder_is_the_same_zip_streamed_by_the_web_process(
    reviewing_round, md
):
    export = _export(reviewing_round, md)
    response = storage.download_response(
        export.file.name, "maskloop-export-x.zip", content_type="application/zip"
    )
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"] == 'attachment; filename="maskloop-export-x.zip"'
    _check_zip(b"".join(response.streaming_content), export)


def test_settings_make_s3_the_default_storage_only_when_an_endpoint_is_set(tmp_path):
    probe = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.STORAGES['default']['BACKEND']); "
        "print(s.STORAGES['default'].get('OPTIONS', {}).get('bucket_name'))"
    )
    base = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    base["MASKLOOP_VAR_DIR"] = str(tmp_path)
    for key in [k for k in base if k.startswith("MASKLOOP_S3_")]:
        del base[key]

    def backend(env):
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        return out.stdout.split()

    assert backend(base) == ["django.core.files.storage.FileSystemStorage", "None"]
    s3 = {
        "MASKLOOP_S3_ENDPOINT_URL": "http://objectstore:8333",
        "MASKLOOP_S3_BUCKET": "maskloop",
        "MASKLOOP_S3_ACCESS_KEY": "k",
        "MASKLOOP_S3_SECRET_KEY": "s",
    }
    assert backend({**base, **s3}) == ["storages.backends.s3.S3Storage", "maskloop"]
