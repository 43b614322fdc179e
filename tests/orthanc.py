"""A real Orthanc with its DICOMweb plugin (Debian's `orthanc` and `orthanc-dicomweb`), started
for the test session on a free loopback port with its own storage folder and configuration, and
stopped at the end. Not the system service: `Orthanc --no-jobs config.json` as a child process.

scripts/ensure-services.sh installs both packages.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

PLUGIN_PATHS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so.1.7",
)


@dataclass
class Orthanc:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The platform's name for it (annotation.dicomweb)."""
        return f"dicomweb://127.0.0.1:{self.port}/dicom-web"

    def upload(self, data: bytes) -> str:
        """Stores one DICOM file through the REST API; returns Orthanc's instance id."""
        r = requests.post(f"{self.rest}/instances", data=data, timeout=30)
        r.raise_for_status()
        return r.json()["ID"]

    def clear(self) -> None:
        for study in requests.get(f"{self.rest}/studies", timeout=30).json():
            requests.delete(f"{self.rest}/studies/{study}", timeout=30).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_start(folder: Path) -> Orthanc:
    """Starts Orthanc storing under `folder`; waits until its DICOMweb root answers.

    Raises:
        RuntimeError: Orthanc or its DICOMweb plugin is not installed, or it did not start
            (the message quotes the end of its log).
    """
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    plugin = next((p for p in PLUGIN_PATHS if Path(p).exists()), None)
    if not Path(binary).exists() or plugin is None:
        raise RuntimeError(
            "Orthanc with its DICOMweb plugin is needed (apt-get install orthanc "
            "orthanc-dicomweb, or scripts/ensure-services.sh)"
        )
    port = _free_port()
    storage = folder / "storage"
    storage.mkdir(parents=True)
    config = folder / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "maskloop-test",
                "StorageDirectory": str(storage),
                "IndexDirectory": str(storage),
                "HttpPort": port,
                "HttpServerEnabled": True,
                "RemoteAccessAllowed": False,
                "AuthenticationEnabled": False,
                "DicomServerEnabled": False,
                "Plugins": [plugin],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            }
        )
    )
    log = folder / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "--no-jobs", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    orthanc = Orthanc(port=port, process=process, log=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if requests.get(f"{orthanc.rest}/dicom-web/studies", timeout=2).ok:
                return orthanc
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    orthanc.stop()
    raise RuntimeError(f"Orthanc did not start; its log ends:\n{log.read_text()[-2000:]}")


DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
CT = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


@contextmanager
def orthanc_loaded(folder: Path, instances: Iterable[dict], *, size: int = 64) -> Iterator[Orthanc]:
    """An Orthanc started in `folder` holding one generated CXR per entry of `instances` (the
    entry's position seeds its pixels), stopped on exit."""
    server = orthanc_start(folder)
    try:
        for seed, instance in enumerate(instances):
            server.upload(cxr_instance(seed=seed, size=size, **instance))
        yield server
    finally:
        server.stop()


def cxr_instance(
    *,
    patient: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str = "DX",
    study_date: str = "20200315",
    seed: int = 0,
    size: int = 64,
) -> bytes:
    """A small 12-bit chest radiograph instance as DICOM Part 10 bytes (pixels from `seed`)."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    rng = np.random.default_rng(seed)
    # Smooth blobs over a gradient: a plausible image with full contrast, unlike others.
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = 0.4 * y
    for _ in range(6):
        cy, cx, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        pixels = pixels + rng.uniform(0.2, 0.6) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / r**2)
    pixels = (pixels / pixels.max() * 4095).astype(np.uint16)
    sop_class = {"DX": DX, "CR": CR, "CT": CT}[modality]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.StudyDate = study_date
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientID = patient
    ds.PatientName = f"Test^{patient}"
    ds.Modality = modality
    ds.ViewPosition = "PA"
    ds.ImagerPixelSpacing = [0.139, 0.139]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
