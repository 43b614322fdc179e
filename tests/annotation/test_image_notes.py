"""Comments and flags on images, the per-image history, and the export's preview."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest

from annotation import services, storage
from annotation.errors import DomainError
from annotation.exporting import write_zip
from annotation.models import Candidate, ImageComment, ImageFlagChange, Mask, ReviewItem
from annotation.selectors import export_count, export_preview, export_rows, image_history

pytestmark = pytest.mark.django_db


def pick(item: ReviewItem, reviewer, *, manual: bool | None):
    """Picks the item's drawn candidate (manual=True), a network's (False) or none (None)."""
    if manual is None:
        return services.decision_create(item=item, reviewer=reviewer, choice="none", seconds=2)
    drawn = Candidate.objects.filter(item=item, mask__source=Mask.Source.DRAWN)
    cand = (
        drawn.first()
        if manual
        else Candidate.objects.filter(item=item).exclude(pk__in=drawn.values("pk")).first()
    )
    assert cand is not None
    return services.decision_create(item=item, reviewer=reviewer, choice=cand.label, seconds=2)


@pytest.fixture
def world(reviewing_round, make_image, md, drawer):
    """4 COVID images in review: one accepted as drawn, one as a machine mask, one redrawn, one
    still open; a control; a COVID image with no mask; one whose drawn mask awaits a round."""
    rnd = reviewing_round(images=4)
    items = list(rnd.items.order_by("id"))
    pick(items[0], md, manual=True)
    pick(items[1], md, manual=False)
    pick(items[2], md, manual=None)
    redraw = items[2].image
    services.mask_draw(image=redraw, author=drawer, data=storage_mask(redraw))
    make_image(covid=False)
    make_image()
    make_image(manual_by=drawer)
    return rnd


def storage_mask(image) -> bytes:
    import numpy as np

    from annotation import imaging

    m = np.zeros((image.height, image.width), dtype=bool)
    m[5:20, 5:20] = True
    return imaging.encode_mask(m)


def test_the_preview_counts_by_class_and_mask_source_and_says_what_is_left_out(world):
    preview = export_preview({"accepted_only": True})
    rows = {r["class"]: r for r in preview["rows"]}
    assert (rows["covid19"]["manual"], rows["covid19"]["machine"], rows["covid19"]["redrawn"]) == (
        1,
        1,
        1,
    )
    assert rows["normal"]["control"] == 1 and rows["normal"]["total"] == 1
    assert preview["images"] == 4 == export_count({"accepted_only": True})
    left = {x["reason"]: x["count"] for x in preview["left_out"]}
    assert left == {"in_review": 1, "unannotated": 1, "manual": 1}
    texts = " ".join(x["text"] for x in preview["left_out"])
    assert "1 image whose drawn mask awaits review (start a round)" in texts
    assert preview["filters_text"] == "All classes, with an accepted mask"

    everything = export_preview({"accepted_only": False})
    assert everything["images"] == 7 == export_count({"accepted_only": False})
    assert everything["totals"]["none"] == 3 and everything["left_out"] == []

    in_round = export_preview({"accepted_only": True, "round": world.number})
    assert in_round["images"] == 3 == export_count({"round": world.number})
    assert {x["reason"]: x["count"] for x in in_round["left_out"]}["other_round"] == 1

    controls = export_preview({"accepted_only": True, "classes": ["normal"]})
    assert controls["images"] == 1 and [r["class"] for r in controls["rows"]] == ["normal"]
    assert controls["filters_text"] == "Normal images, with an accepted mask"


def test_the_preview_api_is_for_the_data_team_and_checks_the_round(world, api, md, data_user):
    assert api(md).get("/api/exports/preview/").status_code == 403
    body = api(data_user).get("/api/exports/preview/?classes=covid19&accepted_only=false").json()
    assert body["images"] == 6 and body["totals"]["none"] == 3
    wrong = api(data_user).get("/api/exports/preview/?round=99")
    assert wrong.status_code == 400 and "no round 99" in wrong.json()["detail"]


def test_comments_are_appended_and_flags_change_only_when_they_differ(make_image, md):
    image = make_image()
    services.image_comment_add(image=image, author=md, text="  faint opacity, left base ")
    services.image_comment_add(image=image, author=md, text="correction: right base")
    with pytest.raises(DomainError, match="write a comment"):
        services.image_comment_add(image=image, author=md, text="   ")
    assert list(ImageComment.objects.values_list("text", flat=True)) == [
        "faint opacity, left base",
        "correction: right base",
    ]
    assert len(services.image_flags_set(image=image, author=md, flags={"uncertain": True})) == 1
    assert services.image_flags_set(image=image, author=md, flags={"uncertain": True}) == []
    services.image_flags_set(image=image, author=md, flags={"uncertain": False, "not_cxr": True})
    assert ImageFlagChange.objects.count() == 3
    with pytest.raises(DomainError, match="unknown flag"):
        services.image_flags_set(image=image, author=md, flags={"blurry": True})


def test_flags_and_comments_reach_metadata_csv_escaped(make_image, md, md2):
    image = make_image(covid=False)
    services.image_flags_set(
        image=image, author=md, flags={"poor_quality": True, "uncertain": True}
    )
    services.image_flags_set(image=image, author=md, flags={"uncertain": False})
    services.image_flags_set(image=image, author=md2, flags={"devices": True})
    services.image_comment_add(image=image, author=md, text='=HYPERLINK("x")\r\nsecond line')
    other = make_image(covid=False)
    out = io.BytesIO()
    write_zip(list(export_rows({})), out, opener=storage.open_file)
    with zipfile.ZipFile(out) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("metadata.csv").decode())))
    by_id = {r["image"].split("/")[1].split("_")[0]: r for r in rows}
    noted, quiet = by_id[f"{image.pk:06d}"], by_id[f"{other.pk:06d}"]
    assert noted["flags"] == "devices;poor_quality"
    assert noted["comments"] == 'md1: =HYPERLINK("x") second line'
    assert quiet["flags"] == "" and quiet["comments"] == ""
    # A cell that would start a formula is escaped by the writer (csv_cell).
    services.image_comment_add(image=other, author=md, text="x")
    from annotation.exporting import csv_cell

    assert csv_cell("=1+1") == "'=1+1"


def test_notes_api_mds_see_their_own_admins_everyone_data_reads_only(
    make_image, api, md, md2, admin_user, data_user
):
    image = make_image()
    url = f"/api/images/{image.pk}/notes/"
    r = api(md).post(url, {"comment": "left base", "flags": {"uncertain": True}}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["comments"][0]["by"] == "md1"
    api(md2).post(url, {"comment": "looks fine"}, format="json")
    mine = api(md2).get(url).json()
    assert [c["text"] for c in mine["comments"]] == ["looks fine"]
    assert not any(f["mine"] or f["set_by"] for f in mine["flags"])
    every = api(admin_user).get(url).json()
    assert [c["by"] for c in every["comments"]] == ["md1", "md2"]
    assert {f["flag"]: f["set_by"] for f in every["flags"]}["uncertain"] == ["md1"]
    assert api(data_user).get(url).status_code == 200
    assert api(data_user).post(url, {"comment": "x"}, format="json").status_code == 403
    bad = api(md).post(url, {"flags": {"blurry": True}}, format="json")
    assert bad.status_code == 400


def test_a_reviewer_does_not_see_the_drawers_comment_on_the_item(reviewing_round, api, md, drawer):
    rnd = reviewing_round(images=2)
    item = rnd.items.first()
    api(drawer).post(
        f"/api/images/{item.image_id}/notes/", {"comment": "my drawing: left"}, format="json"
    )
    seen = api(md).get(f"/api/review-items/{item.uuid}/notes/").json()
    assert seen["comments"] == []
    r = api(md).post(f"/api/review-items/{item.uuid}/notes/", {"comment": "hm"}, format="json")
    assert r.status_code == 201
    assert ImageComment.objects.filter(image_id=item.image_id).count() == 2


def test_the_history_page_lists_everything_newest_first_for_admins_and_data_only(
    world, api, md, admin_user, data_user
):
    item = world.items.order_by("id")[2]  # picked none, then redrawn
    image = item.image
    services.image_comment_add(image=image, author=md, text="redraw was needed")
    services.image_flags_set(image=image, author=md, flags={"uncertain": True})
    events = image_history(image)
    kinds = [e.kind for e in events]
    assert kinds[0] == "flag" and kinds[-1] == "image"
    assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
    assert {"mask", "review", "decision", "ground truth", "comment"} <= set(kinds)
    assert any("none of the candidates" in e.what and e.who == "md1" for e in events)
    assert any(e.kind == "ground truth" and e.who == "drawer" for e in events)
    assert api(md).get(f"/images/{image.pk}/history/").status_code == 403
    for user in (admin_user, data_user):
        page = api(user).get(f"/images/{image.pk}/history/")
        assert page.status_code == 200
        assert "redraw was needed" in page.content.decode()
    listing = api(data_user).get("/exports/").content.decode()
    assert f"/images/{image.pk}/history/" in listing
