"""Blind review: until an MD has decided, nothing they can see says which candidate is their
own drawing or which network made the others.

The reviewer here is md2; the manual masks of `reviewing_round` were drawn by `drawer`, so that
name would be a leak, while md2's own name in the page's top bar is not.
"""

from __future__ import annotations

import base64
import json
import re
from collections import Counter

import pytest
from django.contrib.auth import get_user_model
from django.core.management.color import no_style
from django.db import connection

from annotation import services
from annotation.models import Candidate, Image, ImageClass, Mask, ReviewItem, Round
from training.nets.config import ARCHITECTURES, ENCODERS

pytestmark = pytest.mark.django_db

ITEM_KEYS = {
    "id",
    "round",
    "status",
    "image_url",
    "width",
    "height",
    "candidates",
    "decision_url",
    "page_url",
    "context",
}
# The context beside the images: about the image and the MD's own progress, never about a
# candidate (annotation/selectors/review.py review_context).
CONTEXT_KEYS = {
    "image_name",
    "image_class",
    "patient",
    "round",
    "position",
    "total",
    "decided_in_round",
    "decided_today",
}
CANDIDATE_KEYS = {"label", "mask_url", "overlay_url"}
PROVENANCE_WORDS = [
    "drawn",
    "predicted",
    "prediction",
    "manual",
    "imported",
    "author",
    "source",
    "model",
    "network",
    "fold",
    "unet",
    "u-net",
    "dla",
    "densenet",
    "resnet",
    "inception",
    "chexnet",
    *ARCHITECTURES,
    *ENCODERS,
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def distinctive_ids(admin_user):
    """Makes image, mask, item and candidate ids start at numbers that cannot turn up in a
    page by chance, so that "no id in the page" is a test that can fail."""
    image = Image.objects.create(
        id=9_100_000,
        name="placeholder",
        original="x",
        display="x",
        sha256="0" * 64,
        width=1,
        height=1,
        source="x",
        image_class=ImageClass.NORMAL,
    )
    mask = Mask.objects.create(
        id=9_200_000,
        image=image,
        version=1,
        file="x",
        sha256="x",
        area=0,
        source=Mask.Source.CONTROL,
    )
    rnd = Round.objects.create(
        number=999_999,
        stage=Round.Stage.STAGE_I,
        status=Round.Status.CANCELLED,
        started_by=admin_user,
    )
    item = ReviewItem.objects.create(
        id=9_300_000, round=rnd, image=image, status=ReviewItem.Status.CANCELLED
    )
    candidate = Candidate.objects.create(id=9_400_000, item=item, mask=mask)
    with connection.cursor() as cursor:
        for sql in connection.ops.sequence_reset_sql(
            no_style(), [Image, Mask, ReviewItem, Candidate]
        ):
            cursor.execute(sql)
    for row in (candidate, item, rnd, mask, image):
        row.delete()


@pytest.fixture
def blind_round(distinctive_ids, reviewing_round, md2):
    rnd = reviewing_round(images=4)
    assert Mask.objects.filter(round=rnd).first().pk > 9_200_000
    return rnd


def secrets_of(item: ReviewItem, *, viewer=None) -> list[str]:
    """Every string that would tell a reviewer where an item's candidates came from."""
    # The image's name is shown as context (withheld when it speaks of a mask's source); its
    # id and hash, which would lead to its masks, never are.
    found = [str(item.pk), str(item.image_id), item.image.sha256]
    for c in item.candidates.select_related("mask"):
        found += [str(c.pk), str(c.mask_id), c.mask.sha256, str(c.mask.file.name)]
    found += [u.get_username() for u in get_user_model().objects.all() if u != viewer]
    return found


def assert_tells_nothing(text: str, item: ReviewItem, *, viewer=None) -> None:
    lowered = text.lower()
    for word in PROVENANCE_WORDS:
        assert not re.search(rf"\b{re.escape(word)}\b", lowered), f"{word!r} shown to the MD"
    for secret in secrets_of(item, viewer=viewer):
        assert not re.search(rf"(?<![\w-]){re.escape(secret.lower())}(?![\w-])", lowered), (
            f"{secret!r} shown to the MD"
        )


def assert_blind_payload(body: dict, item: ReviewItem) -> None:
    u = item.uuid
    assert set(body) == ITEM_KEYS
    assert body == {
        "id": str(u),
        "round": item.round.number,
        "status": "open",
        "image_url": f"/api/review-items/{u}/image.png",
        "width": item.image.width,
        "height": item.image.height,
        "candidates": body["candidates"],
        "decision_url": f"/api/review-items/{u}/decision/",
        "page_url": f"/review/{u}/",
        "context": body["context"],
    }
    assert set(body["context"]) == CONTEXT_KEYS
    assert body["context"]["image_name"] == item.image.name
    assert body["context"]["round"] == item.round.number
    for candidate in body["candidates"]:
        assert set(candidate) == CANDIDATE_KEYS
        assert candidate["mask_url"] == f"/api/review-items/{u}/candidates/{candidate['label']}.png"
        assert candidate["overlay_url"] == f"{candidate['mask_url']}?overlay=1"
    assert_tells_nothing(json.dumps(body), item)


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == PNG_SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    assert pos == len(data), "trailing bytes after the last chunk"
    return chunks


# ---------------------------------------------------------------- (a) the item JSON


def test_the_item_json_has_only_the_blind_fields(blind_round, md2, api):
    client = api(md2)
    for item in blind_round.items.select_related("round", "image"):
        response = client.get(f"/api/review-items/{item.uuid}/")
        assert response.status_code == 200
        body = response.json()
        assert_blind_payload(body, item)
        assert [c["label"] for c in body["candidates"]] == ["A", "B", "C"]


def test_the_next_item_json_has_only_the_blind_fields(blind_round, md2, api):
    response = api(md2).get("/api/review-items/next/")
    assert response.status_code == 200
    item = ReviewItem.objects.select_related("round", "image").get(uuid=response.json()["id"])
    assert item.round == blind_round
    assert_blind_payload(response.json(), item)


# ---------------------------------------------------------------- (b) the review page


FIRST_IMAGES = re.compile(
    r'<script id="review-first-images" type="application/json">(.*?)</script>'
)


def test_the_review_page_tells_nothing(blind_round, md2, api):
    item = blind_round.items.first()
    response = api(md2).get(f"/review/{item.uuid}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "md2" in html  # the reviewer's own name is fine, and proves the page was rendered
    # The images the page carries are the endpoints' own bytes (tested below as PNGs); their
    # base64 could spell a word by chance, so the text scan leaves them out.
    assert FIRST_IMAGES.search(html)
    assert_tells_nothing(FIRST_IMAGES.sub("", html), item, viewer=md2)
    for leaky in ("/api/images/", "/api/masks/", "/draw/", "/media/"):
        assert leaky not in html


def test_the_review_page_carries_the_blind_item_and_its_first_images(blind_round, md2, api):
    item = blind_round.items.select_related("round", "image").first()
    client = api(md2)
    html = client.get(f"/review/{item.uuid}/").content.decode()
    inline = re.search(r'<script id="review-item" type="application/json">(.*?)</script>', html)
    assert inline, "the item's data is not in the page"
    body = json.loads(inline.group(1))
    assert body == client.get(f"/api/review-items/{item.uuid}/").json()
    assert_blind_payload(body, item)
    # The reviewing_round images are 64 px, under the smallest display copy: the originals,
    # at the URLs the page would fetch them from, byte for byte.
    carried = json.loads(FIRST_IMAGES.search(html).group(1))
    assert list(carried) == [body["image_url"], *(c["overlay_url"] for c in body["candidates"])]
    for url, uri in carried.items():
        prefix, data = uri.split(",", 1)
        assert prefix == "data:image/png;base64"
        assert base64.b64decode(data) == client.get(url).content, url


def test_a_large_item_carries_its_smallest_copies(make_image, md, md2, admin_user, api):
    from annotation.services import round_start
    from tests.conftest import finish_runs_with, shifted

    for _ in range(2):
        make_image(size=700, manual_by=md)
    rnd = round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        networks=[("unet", "densenet121")],
    )
    finish_runs_with(rnd, shifted)
    item = rnd.items.first()
    client = api(md2)
    html = client.get(f"/review/{item.uuid}/").content.decode()
    carried = json.loads(FIRST_IMAGES.search(html).group(1))
    assert sorted(carried) == sorted(
        [
            f"/api/review-items/{item.uuid}/image.png?max=512",
            f"/api/review-items/{item.uuid}/candidates/A.png?overlay=1&max=512",
            f"/api/review-items/{item.uuid}/candidates/B.png?overlay=1&max=512",
        ]
    )
    for url, uri in carried.items():
        assert base64.b64decode(uri.split(",", 1)[1]) == client.get(url).content, url


# ---------------------------------------------------------------- (c) the candidate PNGs


def test_candidate_pngs_carry_no_metadata_and_look_alike(blind_round, md2, api):
    client = api(md2)
    forms = ["", "?overlay=1", "?overlay=1&max=512", ""]  # masks, overlays, small overlays
    for item, form in zip(blind_round.items.all(), forms, strict=True):
        headers, ihdrs = [], set()
        for label in "ABC":
            response = client.get(f"/api/review-items/{item.uuid}/candidates/{label}.png{form}")
            assert response.status_code == 200
            assert response["Content-Type"] == "image/png"
            assert "Content-Disposition" not in response
            chunks = png_chunks(response.content)
            kinds = [kind for kind, _ in chunks]
            assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
            assert set(kinds) <= {b"IHDR", b"IDAT", b"IEND"}, kinds
            ihdrs.add(chunks[0][1])
            assert_tells_nothing(str(dict(response.headers)), item, viewer=md2)
            headers.append({k: v for k, v in response.headers.items() if k != "Content-Length"})
        assert headers[0] == headers[1] == headers[2]
        assert len(ihdrs) == 1  # same size, bit depth and colour type for every candidate


def test_the_item_image_does_not_name_the_image(blind_round, md2, api):
    item = blind_round.items.select_related("image").first()
    response = api(md2).get(f"/api/review-items/{item.uuid}/image.png")
    assert response.status_code == 200
    assert item.image.sha256 not in str(dict(response.headers))
    assert "Content-Disposition" not in response


# ---------------------------------------------------------------- (d) the URLs


def test_a_malformed_after_parameter_is_a_clear_error(blind_round, md2, api):
    response = api(md2).get("/api/review-items/next/?after=garbage")
    assert response.status_code == 400
    assert "review item id" in response.json()["detail"]


def test_item_urls_name_only_the_item_and_the_label(blind_round, md2, api):
    client = api(md2)
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    allowed = re.compile(
        rf"^/(review/{uuid_re}/|api/review-items/{uuid_re}/"
        rf"(image\.png|candidates/[A-Z]\.png(\?overlay=1)?|decision/))$"
    )
    for item in blind_round.items.all():
        body = client.get(f"/api/review-items/{item.uuid}/").json()
        urls = [
            body["image_url"],
            body["decision_url"],
            body["page_url"],
            *(c["mask_url"] for c in body["candidates"]),
            *(c["overlay_url"] for c in body["candidates"]),
        ]
        for url in urls:
            assert allowed.match(url), url
            assert str(item.uuid) in url

    item = blind_round.items.first()
    html = client.get(f"/review/{item.uuid}/").content.decode()
    data_urls = dict(re.findall(r'data-([a-z-]+-url)="([^"]*)"', html))
    assert data_urls == {
        "decision-url": f"/api/review-items/{item.uuid}/decision/",
        "next-api-url": "/api/review-items/next/",
        "queue-url": "/queue/",
        "lease-url": f"/api/review-items/{item.uuid}/lease/",
        "skip-url": f"/api/review-items/{item.uuid}/skip/",
        "item-api-url": f"/api/review-items/{item.uuid}/",
        # The notes panel: the reviewer's own comments and flags, by the item's opaque id.
        "notes-url": f"/api/review-items/{item.uuid}/notes/",
    }


# ---------------------------------------------------------------- (e) labels and order


def test_labels_are_shuffled_and_candidates_come_in_label_order(reviewing_round, md2, api):
    rnd = reviewing_round(images=12)
    client = api(md2)
    manual_labels, unet_labels, pk_order_is_label_order = Counter(), Counter(), []
    for item in rnd.items.all():
        body = client.get(f"/api/review-items/{item.uuid}/").json()
        labels = [c["label"] for c in body["candidates"]]
        assert labels == sorted(labels) == ["A", "B", "C"]

        by_pk = list(item.candidates.order_by("pk").select_related("mask__model_version"))
        pk_order_is_label_order.append([c.label for c in by_pk] == labels)
        manual_labels.update(c.label for c in by_pk if c.mask.source == Mask.Source.DRAWN)
        unet_labels.update(
            c.label for c in by_pk if c.mask.model_version and c.mask.model_version.arch == "unet"
        )
    assert sum(manual_labels.values()) == 12 and sum(unet_labels.values()) == 12
    # All 12 alike by chance: 3 × (1/3)^12 ≈ 6e-6.
    assert len(manual_labels) > 1, f"the MD's own mask always gets label {manual_labels}"
    assert len(unet_labels) > 1, f"the U-Net mask always gets label {unet_labels}"
    assert not all(pk_order_is_label_order)  # so label order in the JSON is not pk order


# ---------------------------------------------------------------- (f) decided items


def test_next_never_offers_an_item_the_md_has_decided(reviewing_round, md2, md3, api):
    rnd = reviewing_round(images=4, reviewers=2)  # items stay open after one decision
    client = api(md2)
    decided: list[str] = []
    while (response := client.get("/api/review-items/next/")).status_code == 200:
        uuid = response.json()["id"]
        assert uuid not in decided, "an item offered again after its decision"
        assert len(decided) < 4
        picked = client.post(
            f"/api/review-items/{uuid}/decision/", {"choice": "A", "seconds": 2}, format="json"
        )
        assert picked.status_code == 201
        decided.append(uuid)
        for after in decided:
            again = client.get("/api/review-items/next/", {"after": after})
            assert again.status_code == 204 or again.json()["id"] not in decided
        assert all(u not in picked.json()["next_url"] for u in decided)
    assert response.status_code == 204
    assert sorted(decided) == sorted(str(i.uuid) for i in rnd.items.all())
    assert set(rnd.items.values_list("status", flat=True)) == {ReviewItem.Status.OPEN}

    page = client.get("/review/next/")
    assert page.status_code == 302 and page["Location"] == "/queue/"

    # The items are still open for md3, and what md3 sees says nothing of md2's picks.
    other = api(md3).get("/api/review-items/next/")
    assert other.status_code == 200 and other.json()["id"] in decided
    item = ReviewItem.objects.select_related("round", "image").get(uuid=other.json()["id"])
    assert_blind_payload(other.json(), item)


# ---------------------------------------------------------------- (g) the context


def test_the_context_withholds_names_that_speak_of_a_mask_s_source(blind_round, md2, api):
    item = blind_round.items.select_related("round", "image").first()
    Image.objects.filter(pk=item.image_id).update(
        name="uploads/drawer/cxr_manual_mask.png", patient_id="predicted-by-unet"
    )
    item.image.refresh_from_db()
    client = api(md2)
    body = client.get(f"/api/review-items/{item.uuid}/").json()
    assert body["context"]["image_name"] == body["context"]["patient"] == "withheld"
    html = client.get(f"/review/{item.uuid}/").content.decode()
    assert "withheld" in html
    assert_tells_nothing(FIRST_IMAGES.sub("", html), item, viewer=md2)
    for secret in ("cxr_manual_mask", "predicted-by-unet"):
        assert secret not in html


def test_the_context_is_the_same_whichever_candidate_is_the_md_s_own(blind_round, md2, api):
    """Two items of one round, whose manual masks carry different labels: their contexts differ
    only in the image's own name and patient."""
    client = api(md2)
    contexts = []
    for item in blind_round.items.all()[:2]:
        ctx = client.get(f"/api/review-items/{item.uuid}/").json()["context"]
        contexts.append({k: v for k, v in ctx.items() if k not in ("image_name", "patient")})
    assert contexts[0] == contexts[1]


# ---------------------------------------------------------------- (team) queue filters


def test_a_filtered_queue_hands_out_the_same_blind_payload(blind_round, md2, api):
    client = api(md2)
    response = client.get(
        "/api/review-items/next/", {"class": "covid19", "round": blind_round.number}
    )
    assert response.status_code == 200
    item = ReviewItem.objects.select_related("round", "image").get(uuid=response.json()["id"])
    assert_blind_payload(response.json(), item)


def test_the_review_page_with_a_queue_filter_tells_nothing(blind_round, md2, api):
    item = blind_round.items.first()
    services.image_flags_set(image=item.image, author=md2, flags={"uncertain": True})
    query = f"?class=covid19&round={blind_round.number}&flag=uncertain"
    response = api(md2).get(f"/review/{item.uuid}/{query}")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Only class COVID-19" in html  # the filter is shown, and in words of the image only
    assert_tells_nothing(FIRST_IMAGES.sub("", html), item, viewer=md2)
