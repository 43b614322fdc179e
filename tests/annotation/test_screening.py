"""Screening at import: near-duplicates by perceptual hash, blank / low-contrast /
over-exposed / too-small images flagged, held out of rounds until an admin keeps them, the
decision recorded (a row each) and exported, and the ingest report and upload API naming the
flags."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from annotation import imaging, screening, services
from annotation.errors import Conflict
from annotation.ingest import ingest_folder
from annotation.models import Image, ImageClass, Round, Screening, ScreeningDecision
from annotation.phantoms import make_phantom
from annotation.selectors import export_rows, images_to_draw
from annotation.services.planning import plan_round

THRESHOLDS = screening.Thresholds()


@pytest.fixture(autouse=True)
def real_thresholds(settings):
    settings.MASKLOOP_SCREEN_MIN_SIDE = THRESHOLDS.min_side
    settings.MASKLOOP_NEAR_DUPLICATE_DISTANCE = THRESHOLDS.near_duplicate_distance


def phantom(seed: int, size: int = 256, covid: bool = True) -> np.ndarray:
    return make_phantom(seed, size=size, covid=covid).image


def noisy_brighter(gray: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(gray + rng.normal(8, 5, gray.shape), 0, 255).astype(np.uint8)


def create(gray: np.ndarray, name: str, *, covid: bool = True, mask=None) -> Image:
    return services.image_create(
        data=imaging.encode_png(gray),
        name=name,
        source="tests",
        image_class=ImageClass.COVID if covid else ImageClass.NORMAL,
        patient_id=name,
        mask_data=imaging.encode_mask(mask) if mask is not None else None,
    )


def codes(image: Image) -> list[str]:
    return [f["code"] for f in image.screening_flags]


def test_histogram_and_size_checks_flag_each_bad_image_and_pass_a_good_one():
    good = phantom(1)
    rng = np.random.default_rng(1)
    blank = np.clip(128 + rng.normal(0, 4, (256, 256)), 0, 255).astype(np.uint8)
    low_contrast = (good * 0.2 + 100).astype(np.uint8)
    overexposed = np.clip(good.astype(int) + 170, 0, 255).astype(np.uint8)
    flags = {
        name: [f.code for f in screening.image_flags(gray, THRESHOLDS)]
        for name, gray in [
            ("good", good),
            ("blank", blank),
            ("low", low_contrast),
            ("over", overexposed),
            ("small", phantom(1, size=128)),
        ]
    }
    assert flags == {
        "good": [],
        "blank": [screening.BLANK],
        "low": [screening.LOW_CONTRAST],
        "over": [screening.OVEREXPOSED],
        "small": [screening.TOO_SMALL],
    }


def test_near_duplicates_are_flagged_and_a_different_phantom_is_not(db):
    first = create(phantom(7), "first.png")
    copy = create(noisy_brighter(phantom(7)), "copy.png")
    other = create(phantom(8), "other.png")
    assert first.screening == Screening.CLEAR and first.phash
    assert copy.screening == Screening.PENDING
    [flag] = copy.screening_flags
    assert (flag["code"], flag["image"]) == (screening.NEAR_DUPLICATE, first.pk)
    assert flag["distance"] <= THRESHOLDS.near_duplicate_distance
    assert other.screening == Screening.CLEAR and other.screening_flags == []


def test_a_flagged_image_is_held_out_of_rounds_until_an_admin_keeps_it(
    settings, make_image, drawer, admin_user
):
    settings.MASKLOOP_SCREEN_MIN_SIDE = 64
    clear = [make_image(manual_by=drawer) for _ in range(2)]
    small = make_image(manual_by=drawer, size=48)
    assert small.screening == Screening.PENDING and codes(small) == [screening.TOO_SMALL]
    assert small.status == Image.Status.MANUAL  # drawn, but not handed to a round

    def planned() -> set[int]:
        plan = plan_round(stage=Round.Stage.STAGE_I, folds=2, seed=0, test_fraction=0.2)
        return {i.pk for i in plan.review}

    assert planned() == {i.pk for i in clear}
    services.screening_decide(image=small, decided_by=admin_user, decision="exclude")
    assert planned() == {i.pk for i in clear}
    services.screening_decide(image=small, decided_by=admin_user, decision="keep", reason="ok")
    rnd = services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        networks=[("unet", "densenet121")],
    )
    assert set(rnd.items.values_list("image_id", flat=True)) == {small.pk} | {i.pk for i in clear}


def test_decisions_are_rows_never_overwritten_and_exported_in_metadata(
    settings, make_image, admin_user
):
    settings.MASKLOOP_SCREEN_MIN_SIDE = 64
    clear = make_image(covid=False)  # controls are exported at once: their ground truth
    kept = make_image(covid=False, size=48)
    excluded = make_image(covid=False, size=40)
    with pytest.raises(Conflict):
        services.screening_decide(image=clear, decided_by=admin_user, decision="keep")
    services.screening_decide(image=kept, decided_by=admin_user, decision="exclude")
    services.screening_decide(
        image=kept, decided_by=admin_user, decision="keep", reason="a paediatric film"
    )
    services.screening_decide(image=excluded, decided_by=admin_user, decision="exclude")

    history = ScreeningDecision.objects.filter(image=kept).order_by("id")
    assert [(d.decision, d.reason, d.decided_by) for d in history] == [
        ("exclude", "", admin_user),
        ("keep", "a paediatric film", admin_user),
    ]
    assert history[0].flags == kept.screening_flags

    rows = {row.image_id: row for row in export_rows({"accepted_only": True})}
    assert set(rows) == {clear.pk, kept.pk}  # the excluded image is no part of the data set
    assert rows[clear.pk].screening == "clear"
    cell = rows[kept.pk].screening
    assert cell.startswith("kept: too_small (48×48 px")
    assert "by boss on " in cell and cell.endswith(": a paediatric film")


def test_the_ingest_report_and_the_upload_api_name_each_flag(tmp_path, api, admin_user):
    base = phantom(3)
    (tmp_path / "a.png").write_bytes(imaging.encode_png(base))
    (tmp_path / "a_again.png").write_bytes(imaging.encode_png(noisy_brighter(base)))
    (tmp_path / "b.png").write_bytes(imaging.encode_png(phantom(4)))
    (tmp_path / "dark.png").write_bytes(imaging.encode_png(np.full((256, 256), 3, np.uint8)))
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows(
            [["file", "class", "patient"]]
            + [[n, "COVID-19", n] for n in ("a.png", "a_again.png", "b.png", "dark.png")]
        )
    report = ingest_folder(tmp_path)
    assert len(report.imported) == 4
    flagged = dict(report.flagged)
    assert set(flagged) == {"a_again.png", "dark.png"}
    a = Image.objects.get(name="a.png")
    assert (
        flagged["a_again.png"].startswith("near-duplicate: ")
        and f"image {a.pk} (a.png)" in (flagged["a_again.png"])
    )
    assert "almost blank" in flagged["dark.png"] and "over-exposed" in flagged["dark.png"]
    assert "flagged at screening (held out of rounds): 2" in report.summary()
    # an MD is not asked to draw an image held at screening
    assert {i.name for i in images_to_draw()} == {"a.png", "b.png"}

    small = imaging.encode_png(phantom(5, size=100))
    response = api(admin_user).post(
        "/api/images/upload/",
        {"file": _named(small, "small.png"), "image_class": "covid19"},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["screening"] == "pending"
    assert [f["code"] for f in body["screening_flags"]] == [screening.TOO_SMALL]


def _named(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


def test_images_imported_before_screening_get_their_hash_and_are_compared(db):
    from django.core.management import call_command

    old = create(phantom(9), "old.png")
    phash = old.phash
    Image.objects.filter(pk=old.pk).update(phash="")  # as imported before screening existed
    out = io.StringIO()
    call_command("screen_hashes", stdout=out)
    assert out.getvalue().strip() == "hashed: 1"
    old.refresh_from_db()
    assert old.phash == phash and old.screening == Screening.CLEAR
    copy = create(noisy_brighter(phantom(9)), "copy.png")
    assert [(f["code"], f["image"]) for f in copy.screening_flags] == [
        (screening.NEAR_DUPLICATE, old.pk)
    ]
