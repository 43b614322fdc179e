"""A DICOMweb server (a PACS, Orthanc, dcm4chee, a cloud healthcare API) as a source of CXRs.

No Django: `annotation.ingest.ingest_dicomweb` searches and fetches through `PacsServer` and
imports every instance by the same path as a file of a folder. The server is named by a URL
`dicomweb://host:port/path` (plain HTTP) or `dicomwebs://host:port/path` (HTTPS), the path
being the DICOMweb root (Orthanc's is /dicom-web).

QIDO-RS searches the studies (by study date, modality and study UID), then each study's
instances; WADO-RS fetches one instance at a time in the transfer syntax it was stored in, so
the original (16-bit pixels, JPEG or JPEG 2000 data) reaches the import as the PACS holds it.
Every network failure becomes a `PacsError` whose message names the server and what failed.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from annotation.dicom import RADIOGRAPH_MODALITIES

__all__ = [
    "PacsError",
    "PacsFilters",
    "PacsInstance",
    "PacsServer",
    "StowReport",
    "is_dicomweb_url",
    "stow_export",
]

SCHEMES = {"dicomweb": "http", "dicomwebs": "https"}
_DATE = re.compile(r"^(\d{8})?(-(\d{8})?)?$")
_MODALITY = re.compile(r"^[A-Z]{1,16}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# QIDO attribute tags (hex keys of the DICOM JSON model).
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_MODALITY_TAG, _STUDY_DATE, _PATIENT_ID = "00080060", "00080020", "00100020"
_PAGE = 500  # results asked per QIDO request; the client asks again until a page is short


class PacsError(Exception):
    """The DICOMweb server could not be reached or answered an error; the message says which
    server and what failed, in a sentence."""


def is_dicomweb_url(text: str) -> bool:
    return urlsplit(text).scheme.lower() in SCHEMES


@dataclass(frozen=True)
class PacsFilters:
    """What to pull: studies of a date range, with instances of some modalities, or named
    studies. Empty means no restriction, except modalities: radiographs (CR, DX, DR, RG) only
    by default, since the import refuses the others."""

    study_date: str = ""  # YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD or YYYYMMDD-
    modalities: tuple[str, ...] = ()
    study_uids: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls, *, study_date: str = "", modalities: str | Sequence[str] = "", study_uids: Any = ""
    ) -> PacsFilters:
        """Filters from the command line or a form: comma-separated lists.

        Raises:
            ValueError: a date range, modality or UID that is not one (the message says which).
        """
        study_date = (study_date or "").strip()
        if study_date and not _DATE.match(study_date) or study_date == "-":
            raise ValueError(
                f"study date {study_date!r} is not YYYYMMDD or a range YYYYMMDD-YYYYMMDD"
            )
        mods = _split(modalities, upper=True) or RADIOGRAPH_MODALITIES
        for m in mods:
            if not _MODALITY.match(m):
                raise ValueError(f"modality {m!r} is not a DICOM modality code such as CR or DX")
        uids = _split(study_uids)
        for u in uids:
            if not _UID.match(u) or len(u) > 64:
                raise ValueError(f"study UID {u!r} is not a DICOM UID (digits and dots)")
        return cls(study_date=study_date, modalities=mods, study_uids=uids)

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_date": self.study_date,
            "modalities": list(self.modalities),
            "study_uids": list(self.study_uids),
        }

    def describe(self) -> str:
        parts = []
        if self.study_date:
            parts.append(f"study date {self.study_date}")
        if self.modalities:
            parts.append(f"modality {', '.join(self.modalities)}")
        if self.study_uids:
            parts.append(f"{len(self.study_uids)} named studies")
        return "; ".join(parts) or "every study"


def _split(value: str | Sequence[str], *, upper: bool = False) -> tuple[str, ...]:
    items: Iterable[str] = value.split(",") if isinstance(value, str) else value
    out = []
    for item in items:
        item = item.strip()
        if item:
            out.append(item.upper() if upper else item)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class PacsInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str


@dataclass(frozen=True)
class PacsStudy:
    study_uid: str
    study_date: str


class PacsServer:
    """One DICOMweb server.

    Args:
        url: dicomweb://host:port/path or dicomwebs://host:port/path.
        timeout: seconds to wait for each answer.
        attempts: tries of each request (a connection error, or HTTP 408, 429, 503, 504)
            before it fails, with an exponential back-off between them (2, 4, 8… s).

    Raises:
        ValueError: not such a URL.
    """

    def __init__(self, url: str, *, timeout: float = 30, attempts: int = 5) -> None:
        parts = urlsplit(url)
        scheme = SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise ValueError(
                f"{url!r} is not a DICOMweb URL; expected dicomweb://host:port/path "
                "(or dicomwebs:// for HTTPS)"
            )
        if parts.username or parts.password:
            raise ValueError(f"{url!r}: credentials in the URL are not supported")
        self.url = url
        self.name = f"{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}"
        self.http_url = f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.client = DICOMwebClient(url=self.http_url, timeout=timeout)
        self.attempts = max(1, attempts)
        self.client.set_http_retry_params(
            retry=self.attempts > 1, max_attempts=self.attempts, wait_exponential_multiplier=1000
        )

    def _fail(self, what: str, exc: Exception) -> PacsError:
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            why = f"it answered HTTP {exc.response.status_code} {exc.response.reason or ''}"
        elif isinstance(exc, requests.ConnectionError):
            why = "it could not be reached (connection refused or lost)"
        elif isinstance(exc, requests.Timeout):
            why = "it did not answer in time"
        else:
            why = f"{type(exc).__name__}: {exc}"
        tries = f" ({self.attempts} tries)" if self.attempts > 1 else ""
        return PacsError(f"The DICOMweb server {self.http_url} failed to {what}: {why}{tries}.")

    def search_studies(self, filters: PacsFilters) -> list[PacsStudy]:
        """The studies the filters select (QIDO-RS), by study UID, each once.

        Raises:
            PacsError: the search failed.
        """
        queries: list[dict[str, str]] = []
        base = {"StudyDate": filters.study_date} if filters.study_date else {}
        for uid in filters.study_uids or ("",):
            for modality in filters.modalities or ("",):
                q = dict(base)
                if uid:
                    q["StudyInstanceUID"] = uid
                if modality:
                    q["ModalitiesInStudy"] = modality
                queries.append(q)
        found: dict[str, PacsStudy] = {}
        for q in queries:
            try:
                results = self.client.search_for_studies(
                    search_filters=q, limit=_PAGE, get_remaining=True
                )
            except (requests.RequestException, ValueError) as exc:
                raise self._fail(f"search studies ({_words(q)})", exc) from None
            for r in results:
                uid = _value(r, _STUDY_UID)
                if uid and uid not in found:
                    found[uid] = PacsStudy(study_uid=uid, study_date=_value(r, _STUDY_DATE))
        return sorted(found.values(), key=lambda s: (s.study_date, s.study_uid))

    def search_instances(self, study_uid: str, filters: PacsFilters) -> list[PacsInstance]:
        """The instances of a study (QIDO-RS), of the filters' modalities if any.

        Raises:
            PacsError: the search failed.
        """
        try:
            results = self.client.search_for_instances(
                study_instance_uid=study_uid,
                fields=[_MODALITY_TAG, _SERIES_UID],
                limit=_PAGE,
                get_remaining=True,
            )
        except (requests.RequestException, ValueError) as exc:
            raise self._fail(f"list the instances of study {study_uid}", exc) from None
        out = []
        for r in results:
            inst = PacsInstance(
                study_uid=study_uid,
                series_uid=_value(r, _SERIES_UID),
                sop_uid=_value(r, _SOP_UID),
                modality=_value(r, _MODALITY_TAG).upper(),
            )
            if not inst.sop_uid or not inst.series_uid:
                continue
            # A study of several modalities: keep the instances of the ones asked for (an
            # instance without a modality in the answer is fetched; the import checks it).
            if filters.modalities and inst.modality and inst.modality not in filters.modalities:
                continue
            out.append(inst)
        return sorted(out, key=lambda i: (i.series_uid, i.sop_uid))

    def fetch(self, instance: PacsInstance) -> bytes:
        """One instance (WADO-RS), as a DICOM Part 10 file in the transfer syntax stored.

        Raises:
            PacsError: the retrieval failed.
        """
        try:
            ds = self.client.retrieve_instance(
                study_instance_uid=instance.study_uid,
                series_instance_uid=instance.series_uid,
                sop_instance_uid=instance.sop_uid,
                media_types=(("application/dicom", "*"),),
            )
        except (requests.RequestException, ValueError, IndexError) as exc:
            raise self._fail(f"send instance {instance.sop_uid}", exc) from None
        out = io.BytesIO()
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()

    def has_instance(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the server holds this instance (QIDO-RS).

        Raises:
            PacsError: the search failed.
        """
        try:
            found = self.client.search_for_instances(
                study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}
            )
        except (requests.RequestException, ValueError) as exc:
            raise self._fail(f"look for instance {sop_uid}", exc) from None
        return any(_value(r, _SOP_UID) == sop_uid for r in found)

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """Stores instances (STOW-RS).

        Raises:
            PacsError: the server refused them or could not be reached.
        """
        try:
            self.client.store_instances(datasets=list(datasets))
        except (requests.RequestException, ValueError) as exc:
            raise self._fail(f"store {len(datasets)} instances", exc) from None


def _value(result: dict[str, Any], tag: str) -> str:
    values = result.get(tag, {}).get("Value") or [""]
    return str(values[0])


def _words(query: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in query.items()) or "all studies"


@dataclass
class StowReport:
    """What a push of an export's DICOM files (STOW-RS) did, by archive name."""

    server: str
    stored: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # on the server before: not sent again
    seconds: float = 0.0
    stopped: str = ""  # the server's failure, naming it and what failed

    def summary(self) -> str:
        lines = [
            f"server: {self.server}",
            f"stored: {len(self.stored)}",
            f"already on the server (not sent): {len(self.already)}",
            f"time: {self.seconds:.1f} s",
        ]
        return "\n".join(lines + stopped_lines(self.stopped, "push", "stored"))


def stopped_lines(stopped: str, job: str, kept: str) -> list[str]:
    """The end of a pull's or a push's report (`job`) that stopped early: why, and that the
    same job run again resumes, skipping the instances it `kept` (imported, stored)."""
    if not stopped:
        return []
    return [
        f"stopped: {stopped}",
        f"run the same {job} again to resume: {kept} instances are skipped",
    ]


def stow_export(
    server: PacsServer,
    archive: IO[bytes],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> StowReport:
    """Stores the DICOM files of a "dicom-seg" export (annotation.exporting) on the server.

    Each file's sha256 is checked against the export's manifest first. A derived Secondary
    Capture (dicom-seg/<image>.sc.dcm, for an image that did not come from DICOM) is stored
    before its SEG, so that every SEG's reference resolves on the server. A file the server
    already holds (same SOP Instance UID, found by QIDO-RS) is not sent again.

    Args:
        server: where to store them.
        archive: the export's zip (seekable).
        progress: called with (files done, files) after each file.

    Raises:
        ValueError: not a "dicom-seg" export, or a file that does not match the manifest.
    """
    report = StowReport(server=server.http_url)
    started = time.monotonic()
    with zipfile.ZipFile(archive) as zf:
        try:
            manifest = json.loads(zf.read("manifest.json"))["files"]
        except (KeyError, ValueError):
            raise ValueError("not a maskloop export: it has no manifest.json") from None
        names = sorted(n for n in manifest if n.startswith("dicom-seg/") and n.endswith(".dcm"))
        if not names:
            raise ValueError("the export holds no DICOM-SEG (export it in the dicom-seg format)")
        # Secondary Captures first: each SEG's reference then resolves when the SEG arrives.
        names.sort(key=lambda n: (not n.endswith(".sc.dcm"), n))
        for done, name in enumerate(names, start=1):
            data = zf.read(name)
            if hashlib.sha256(data).hexdigest() != manifest[name]:
                raise ValueError(f"{name} does not match its sha256 in the manifest")
            ds = pydicom.dcmread(io.BytesIO(data))
            try:
                if server.has_instance(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)):
                    report.already.append(name)
                else:
                    server.store([ds])
                    report.stored.append(name)
            except PacsError as exc:
                report.stopped = str(exc)
                break
            if progress:
                progress(done, len(names))
    report.seconds = time.monotonic() - started
    return report
