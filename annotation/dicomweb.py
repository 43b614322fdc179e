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

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from annotation.dicom import RADIOGRAPH_MODALITIES

__all__ = ["PacsError", "PacsFilters", "PacsInstance", "PacsServer", "is_dicomweb_url"]

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
