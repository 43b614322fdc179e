"""Bad input over HTTP gets a clear 4xx with its reason, and nothing is stored.

Each case is one kind of bad input, as an attacker or a careless user sends it: decompression
bombs, truncated and lying files, DICOM without pixels or with absurd sizes, empty and huge
uploads, wrong-size and non-binary masks, bad JSON, NUL bytes, overlong strings, out-of-range
numbers. Every case asserts the status, that the answer says why, that no row of any table and
no file under MEDIA_ROOT was added, and that the request's peak memory stayed under 200 MB.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from annotation.models import Round
from tests.security import badfiles as bad
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db

MEMORY_LIMIT = 200 * bad.MB


@dataclass(frozen=True)
class Case:
    """One bad request: what is sent, and the status and words of the answer."""

    status: int
    says: str
    fields: dict[str, Any] = field(default_factory=dict)  # bytes are files; None: left out
    body: bytes | str | None = None  # or a raw body, with its content type
    content_type: str = "application/json"
    query: str = ""
    settings: dict[str, int] = field(default_factory=dict)

    def send(self, client, url: str, defaults: dict[str, Any]):
        url = url + self.query
        if self.body is not None:
            return client.generic("POST", url, self.body, content_type=self.content_type)
        data = {
            name: SimpleUploadedFile("scan.png", value) if isinstance(value, bytes) else value
            for name, value in {**defaults, **self.fields}.items()
            if value is not None
        }
        return client.post(url, data, format="multipart")


def file(data: bytes, name: str) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data)


def answer_text(response) -> str:
    try:
        return json.dumps(response.json(), ensure_ascii=False)
    except (ValueError, TypeError):
        return response.content.decode(errors="replace")


def check(response, case: Case, before, memory: bad.PeakMemory) -> None:
    text = answer_text(response)
    assert response.status_code == case.status, text
    assert case.says.lower() in text.lower(), text
    assert bad.stored() == before, "a row or a media file was added"
    assert memory.peak < MEMORY_LIMIT, f"peak {memory.peak / bad.MB:.0f} MB"


def run(client, url: str, case: Case, settings, defaults: dict[str, Any] | None = None) -> None:
    for name, value in case.settings.items():
        setattr(settings, name, value)
    before = bad.stored()
    with bad.PeakMemory() as memory:
        response = case.send(client, url, defaults or {})
    check(response, case, before, memory)


# ---------------------------------------------------------------- POST /api/images/upload/

CXR = bad.cxr_png()
IMAGE_UPLOADS = {
    "png-bomb-16bit-9000x9000": Case(
        400, "larger than the limit", {"file": bad.png_of_zeros(9000, 9000, 16)}
    ),
    "png-side-9000x16": Case(
        400, "limit of 8192 pixels on a side", {"file": bad.png_of_zeros(9000, 16)}
    ),
    "png-pixels-7000x7000": Case(400, "megapixels", {"file": bad.png_of_zeros(7000, 7000)}),
    "jpeg-header-claims-60000x60000": Case(
        400, "larger than the limit", {"file": bad.jpeg_lying_size(60000, 60000)}
    ),
    "bmp-header-claims-30000x30000": Case(
        400, "larger than the limit", {"file": bad.bmp_lying_size(30000, 30000)}
    ),
    "png-header-claims-3000x3000-holds-10x10": Case(
        400, "damaged or truncated", {"file": bad.png_lying_header(3000, 3000)}
    ),
    "png-truncated": Case(400, "damaged or truncated", {"file": CXR[:200]}),
    "png-bad-checksum": Case(400, "damaged or truncated", {"file": bad.png_bad_checksum()}),
    "zero-bytes": Case(400, "empty", {"file": b""}),
    "text-named-png": Case(400, "not a PNG or JPEG", {"file": b"patient notes, not an image"}),
    "gif": Case(400, "only PNG and JPEG", {"file": bad.gif_image()}),
    "dicom-ct": Case(400, "modality CT, not a radiograph", {"file": bad.dicom(Modality="CT")}),
    "dicom-claims-60000x60000": Case(
        400, "limit of 8192", {"file": bad.dicom(60000, 60000, pixel_bytes=64)}
    ),
    "dicom-3-frames": Case(400, "only single-frame", {"file": bad.dicom(NumberOfFrames=3)}),
    "png-8x8": Case(400, "at least 16", {"file": bad.png_of_zeros(8, 8)}),
    "file-field-is-text": Case(400, "not a file", {"file": "just text"}),
    "no-file": Case(400, "no file was submitted", {"file": None}),
    "unknown-class": Case(400, "not a valid choice", {"image_class": "covid19'; DROP TABLE"}),
    "class-with-nul": Case(400, "not a valid choice", {"image_class": "covid\x0019"}),
    "patient-id-150-chars": Case(400, "no more than 100", {"patient_id": "P" * 150}),
    "patient-id-nul": Case(400, "null characters", {"patient_id": "P\x001"}),
    "patient-id-control-character": Case(400, "control character", {"patient_id": "P\x071"}),
    "source-overlong": Case(400, "no more than 100", {"source": "s" * 101}),
    "mask-wrong-size": Case(400, "the image's own size", {"mask": bad.mask_png(32)}),
    "mask-not-binary": Case(400, "not binary", {"mask": bad.mask_png(64, levels=True)}),
    "mask-jpeg": Case(
        400, "must be a PNG", {"mask": bad.encode(bad.np.zeros((64, 64), "uint8"), "JPEG")}
    ),
    "mask-bomb-9000x9000": Case(
        400, "larger than the limit", {"mask": bad.png_of_zeros(9000, 9000)}
    ),
    "mask-4000x4000-for-a-64x64-image": Case(
        400, "the image's own size", {"mask": bad.png_of_zeros(4000, 4000)}
    ),
    "file-over-the-size-limit": Case(
        400,
        "files are limited to",
        {"file": bad.png_of_zeros(16, 16) + bytes(120_000)},
        settings={"MASKLOOP_MAX_UPLOAD_BYTES": 100_000, "DATA_UPLOAD_MAX_MEMORY_SIZE": 50_000},
    ),
    "request-over-the-size-limit": Case(
        413,
        "the limit is",
        {"file": bytes(400_000)},
        settings={"MASKLOOP_MAX_UPLOAD_BYTES": 100_000, "DATA_UPLOAD_MAX_MEMORY_SIZE": 50_000},
    ),
}


@pytest.mark.parametrize("case", IMAGE_UPLOADS.values(), ids=IMAGE_UPLOADS.keys())
def test_image_upload_refuses(api, admin_user, settings, case):
    defaults = {"file": CXR, "image_class": "covid19"}
    run(api(admin_user), "/api/images/upload/", case, settings, defaults)


# ---------------------------------------------------------------- POST /api/images/<id>/masks/

MASK_UPLOADS = {
    "mask-wrong-size": Case(400, "32×32 pixels but the image is 64×64", {"mask": bad.mask_png(32)}),
    "mask-not-binary": Case(400, "not binary", {"mask": bad.mask_png(64, levels=True)}),
    "mask-bomb-9000x9000": Case(
        400, "larger than the limit", {"mask": bad.png_of_zeros(9000, 9000)}
    ),
    "mask-bomb-6500x6500-pillow-only-warns": Case(
        400, "larger than the limit", {"mask": bad.png_of_zeros(6500, 6500)}
    ),
    "mask-4000x4000-for-a-64x64-image": Case(
        400, "4000×4000 pixels but the image is 64×64", {"mask": bad.png_of_zeros(4000, 4000)}
    ),
    "mask-bomb-16bit-9000x9000": Case(
        400, "larger than the limit", {"mask": bad.png_of_zeros(9000, 9000, 16)}
    ),
    "mask-header-claims-60000x60000": Case(
        400, "larger than the limit", {"mask": bad.jpeg_lying_size(60000, 60000)}
    ),
    "mask-jpeg": Case(
        400, "must be a PNG", {"mask": bad.encode(bad.np.zeros((64, 64), "uint8"), "JPEG")}
    ),
    "mask-truncated": Case(400, "damaged or truncated", {"mask": bad.mask_png()[:60]}),
    "mask-zero-bytes": Case(400, "empty", {"mask": b""}),
    "mask-is-text": Case(400, "not a PNG or JPEG", {"mask": b'{"polygon": [1, 2, 3]}'}),
    "mask-field-is-text": Case(400, "not a file", {"mask": "0,0,1,1"}),
    "no-mask": Case(400, "no file was submitted", {"mask": None}),
    "based-on-huge": Case(400, "less than or equal to", {"based_on": str(2**70)}),
    "based-on-negative": Case(400, "greater than or equal to 1", {"based_on": "-1"}),
    "based-on-nul": Case(400, "valid integer", {"based_on": "1\x00"}),
    "mask-over-the-size-limit": Case(
        413,
        "the limit is",
        {"mask": bytes(400_000)},
        settings={"MASKLOOP_MAX_UPLOAD_BYTES": 100_000, "DATA_UPLOAD_MAX_MEMORY_SIZE": 50_000},
    ),
}


@pytest.mark.parametrize("case", MASK_UPLOADS.values(), ids=MASK_UPLOADS.keys())
def test_mask_upload_refuses(api, md, make_image, settings, case):
    image = make_image(size=64)
    run(api(md), f"/api/images/{image.pk}/masks/", case, settings, {"mask": bad.mask_png()})


# ---------------------------------------------------------------- POST /api/rounds/


def body(**fields) -> str:
    return json.dumps({"stage": "I", **fields})


ROUND_STARTS = {
    "seed-negative": Case(400, "greater than or equal to 0", body=body(seed=-1)),
    "seed-2**80": Case(400, "less than or equal to", body=body(seed=2**80)),
    "input-size-not-a-multiple-of-32": Case(400, "multiple of 32", body=body(input_size=100)),
    "input-size-huge": Case(400, "less than or equal to 1024", body=body(input_size=2**40)),
    "reviewers-above-the-active-mds": Case(400, "active MDs", body=body(reviewers_per_item=2)),
    "reviewers-zero": Case(400, "greater than or equal to 1", body=body(reviewers_per_item=0)),
    "folds-zero": Case(400, "greater than or equal to 2", body=body(folds=0)),
    "epochs-a-billion": Case(400, "less than or equal to 500", body=body(epochs=10**9)),
    "test-fraction-nan-in-a-form": Case(  # rounds take JSON only: a form is refused whole
        415,
        "Unsupported media type",
        body="stage=I&test_fraction=nan",
        content_type="application/x-www-form-urlencoded",
    ),
    "test-fraction-infinity-json": Case(
        400, "JSON parse error", body='{"stage": "I", "test_fraction": Infinity}'
    ),
    "stage-with-nul": Case(400, "not a valid choice", body=body(stage="I\x00")),
    "network-with-nul": Case(
        400, "null characters", body=body(networks=[["unet\x00", "densenet121"]])
    ),
    "network-name-overlong": Case(
        400, "no more than 40", body=body(networks=[["u" * 5000, "densenet121"]])
    ),
    "networks-a-thousand": Case(
        400, "no more than", body=body(networks=[["unet", "densenet121"]] * 1000)
    ),
    "network-not-a-pair": Case(400, "at least 2 elements", body=body(networks=[["unet"]])),
    "network-unknown": Case(400, "unknown", body=body(networks=[["resnet", "vgg16"]])),
    "preset-unknown": Case(400, "not a valid choice", body=body(preset="huge")),
    "json-syntax-error": Case(400, "JSON parse error", body='{"stage": "I",'),
    "json-nested-100000-deep": Case(400, "JSON parse error", body="[" * 100_000 + "]" * 100_000),
    "json-a-list": Case(400, "expected a dictionary", body="[1, 2, 3]"),
    "json-lone-surrogate-in-a-choice": Case(400, "not a valid choice", body='{"stage": "\\ud800"}'),
    "json-lone-surrogate-in-a-name": Case(
        400, "surrogate characters", body='{"stage": "I", "networks": [["\\udfff", "x"]]}'
    ),
    "json-not-utf8": Case(400, "JSON parse error", body=b'{"stage": "\xff\xfe"}'),
    "body-over-the-size-limit": Case(413, "the limit is", body=body(note="x" * 3_000_000)),
    "text-plain": Case(415, "unsupported media type", body="stage=I", content_type="text/plain"),
}


@pytest.mark.parametrize("case", ROUND_STARTS.values(), ids=ROUND_STARTS.keys())
def test_round_start_refuses(api, admin_user, md, make_image, settings, case):
    for patient in "AB":
        make_image(manual_by=md, patient=patient)
    run(api(admin_user), "/api/rounds/", case, settings)


# ---------------------------------------------------------------- query strings and addresses

ITEM = uuid.uuid4()
QUERIES = {
    "status-nul": ("/api/images/?status=%00", 400, "NUL"),
    "class-nul": ("/api/images/?class=covid%0019", 400, "NUL"),
    "status-unknown": ("/api/images/?status=accepted'--", 400, "status must be one of"),
    "class-unknown": ("/api/images/?class=%ff%fe", 400, "class must be one of"),
    "parameter-name-nul": ("/api/images/?st%00atus=x", 400, "NUL"),
    "candidate-label-nul": (f"/api/review-items/{ITEM}/candidates/%00.png", 400, "NUL"),
    "candidate-label-control": (f"/api/review-items/{ITEM}/candidates/A%0d%0a.png", 400, "NUL"),
    "display-max-nul": ("/api/images/1/display/?max=%00", 400, "NUL"),
    "next-after-nul": ("/api/review-items/next/?after=%00", 400, "NUL"),
    "page-class-nul": ("/maps/?class=%00", 400, "NUL"),
}


@pytest.mark.parametrize(("url", "status", "says"), QUERIES.values(), ids=QUERIES.keys())
def test_query_and_address_refuse(api, md, make_image, url, status, says):
    make_image()
    client = api(md)
    before = bad.stored()
    response = client.get(url)
    assert response.status_code == status, answer_text(response)
    assert says.lower() in answer_text(response).lower()
    assert bad.stored() == before


# ---------------------------------------------------------------- POST /api/infer/ (and DICOM)


@pytest.fixture
def final_ensemble(admin_user):
    """A finished final round with one network. Its weights are never loaded: every upload here
    is refused before the networks run."""
    rnd = Round.objects.create(
        number=90, stage=Round.Stage.FINAL, status=Round.Status.DONE, started_by=admin_user
    )
    run = TrainingRun.objects.create(
        round=rnd,
        arch="unet",
        encoder="densenet121",
        config={},
        status=TrainingRun.Status.SUCCEEDED,
    )
    return ModelVersion.objects.create(
        run=run,
        arch="unet",
        encoder="densenet121",
        config={},
        weights="models/none.weights.h5",
        data_version="test",
    )


INFER_UPLOADS = {
    "dicom-deflated-bomb-9000x9000": (
        bad.dicom(9000, 9000, deflated=True),
        400,
        "limit of 8192 pixels on a side",
    ),
    "dicom-deflated-inflates-beyond-its-header": (
        bad.dicom(64, 64, deflated=True, pixel_bytes=60 * bad.MB),
        400,
        "inflates to more than its header declares",
    ),
    "dicom-rows-columns-65535": (
        bad.dicom(65535, 65535, pixel_bytes=100),
        400,
        "limit of 8192 pixels on a side",
    ),
    "dicom-6400x6400-over-the-pixel-limit": (
        bad.dicom(6400, 6400, pixel_bytes=100),
        400,
        "megapixels",
    ),
    "dicom-deflate-stream-damaged": (
        bad.dicom_damaged_deflate(),
        400,
        "not a readable DICOM file",
    ),
    "dicom-without-pixels": (bad.dicom_report(), 400, "without an image"),
    "dicom-rows-missing": (bad.dicom(None, 64, pixel_bytes=128), 400, "no Rows"),
    "dicom-rows-not-a-number": (bad.dicom(64, 64, Rows=None), 400, "no Rows"),
    "dicom-100000-frames": (bad.dicom(64, 64, NumberOfFrames=100_000), 400, "100000 frames"),
    "dicom-64-bits-allocated": (bad.dicom(64, 64, BitsAllocated=64), 400, "64 bits allocated"),
    "dicom-4-samples-per-pixel": (bad.dicom(64, 64, SamplesPerPixel=4), 400, "4 samples"),
    "dicom-pixel-data-truncated": (
        bad.dicom(512, 512, pixel_bytes=100),
        400,
        "cannot be decoded",
    ),
    "dicom-8x8": (bad.dicom(8, 8), 400, "at least 16"),
    "dicom-garbage-after-preamble": (
        bytes(128) + b"DICM" + b"\xff" * 64,
        400,
        "without an image",
    ),
    "dicom-zero-bytes": (b"", 400, "empty"),
    "png-bomb-16bit-9000x9000": (bad.png_of_zeros(9000, 9000, 16), 400, "larger than the limit"),
    "jpeg-header-claims-60000x60000": (
        bad.jpeg_lying_size(60000, 60000),
        400,
        "larger than the limit",
    ),
    "not-an-image": (b"%PDF-1.7 not a radiograph", 400, "not a PNG, JPEG or DICOM"),
}


@pytest.mark.parametrize(
    ("data", "status", "says"), INFER_UPLOADS.values(), ids=INFER_UPLOADS.keys()
)
def test_infer_refuses(api, md, final_ensemble, settings, data, status, says):
    name = "scan.dcm" if data[128:132] == b"DICM" else "scan.bin"
    case = Case(status, says)
    client = api(md)
    before = bad.stored()
    with bad.PeakMemory() as memory:
        response = client.post(
            "/api/infer/", {"file": SimpleUploadedFile(name, data)}, format="multipart"
        )
    check(response, case, before, memory)


@pytest.mark.parametrize(
    ("query", "fields", "says"),
    [
        ("?max=%00", {}, "NUL"),
        ("?max=99999", {}, "max must be one of"),
        ("", {"file": "not a file"}, "not a file"),
    ],
    ids=["max-nul", "max-unknown", "file-field-is-text"],
)
def test_infer_refuses_bad_fields(api, md, final_ensemble, query, fields, says):
    before = bad.stored()
    response = api(md).post(
        "/api/infer/" + query, fields or {"file": file(CXR, "a.png")}, format="multipart"
    )
    assert response.status_code == 400 and says.lower() in answer_text(response).lower()
    assert bad.stored() == before


@pytest.mark.parametrize(
    "payload",
    [b"", b"--broken\r\nnot multipart at all", bad.png_of_zeros(9000, 9000, 16)],
    ids=["no-body", "broken-multipart", "png-bomb"],
)
def test_infer_says_409_before_reading_the_body(api, md, payload):
    before = bad.stored()
    with bad.PeakMemory() as memory:
        response = api(md).generic(
            "POST", "/api/infer/", payload, content_type="multipart/form-data; boundary=broken"
        )
    assert response.status_code == 409
    assert "No infection-map networks" in response.json()["detail"]
    assert bad.stored() == before
    assert memory.peak < MEMORY_LIMIT
