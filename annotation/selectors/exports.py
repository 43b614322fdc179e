"""What an export holds: current ground truth and the streamed rows with their folds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from django.db import connection
from django.db.models import (
    OuterRef,
    QuerySet,
    Subquery,
)

from annotation.exporting import ExportRow
from annotation.models import (
    GroundTruth,
    Image,
    ImageClass,
    Mask,
    ReviewItem,
    Round,
    Screening,
    ScreeningDecision,
)
from annotation.selectors.history import images_notes_summary


def current_ground_truths() -> QuerySet[GroundTruth]:
    """The current (newest) ground truth of every image that has one, as one query: filter it
    further, or iterate it, rather than loading it whole."""
    newest = GroundTruth.objects.filter(image=OuterRef("image")).order_by("-id").values("id")[:1]
    return GroundTruth.objects.filter(pk=Subquery(newest))


EXPORT_CHUNK = 2000


def export_images(filters: dict[str, Any]) -> QuerySet[Image]:
    """The images an export with these (clean) filters holds, in id order, each annotated
    with `gt_id`: its current ground truth (the newest), found by SQL, or None."""
    newest = GroundTruth.objects.filter(image=OuterRef("pk")).order_by("-id")
    images = Image.objects.annotate(gt_id=Subquery(newest.values("id")[:1])).order_by("id")
    # An image an admin excluded at screening is no part of the data set.
    images = images.exclude(screening=Screening.EXCLUDED)
    if filters.get("classes"):
        images = images.filter(image_class__in=filters["classes"])
    if filters.get("round") is not None:
        images = images.annotate(
            gt_round=Subquery(newest.values("item__round__number")[:1])
        ).filter(gt_round=filters["round"])
    if filters.get("accepted_only", True):
        images = images.filter(gt_id__isnull=False)
    return images


def export_count(filters: dict[str, Any]) -> int:
    return export_images(filters).count()


def export_rows(filters: dict[str, Any], *, chunk_size: int = EXPORT_CHUNK) -> Iterator[ExportRow]:
    """One row per exported image with the provenance of its accepted mask, in image id order.

    A stream: images come from a server-side cursor `chunk_size` at a time, each chunk's
    ground truths in one more query, so memory stays flat however many images there are.
    Folds are grouped by patient and stratified by class (see `_export_folds`).
    """
    images = export_images(filters)
    folds = _export_folds(images)
    fold: tuple[int, int] | None = next(folds, None)
    fields = (
        *("id", "name", "original", "image_class", "patient_id", "source", "width"),
        *("height", "sha256", "gt_id", "screening", "screening_flags"),
        *("study_uid", "series_uid", "sop_instance_uid"),
    )
    for batch in _chunks(images.values(*fields).iterator(chunk_size=chunk_size), chunk_size):
        gts = GroundTruth.objects.select_related(
            "mask__model_version",
            "mask__author",
            "item__round",
            "decision__reviewer",
            "accepted_by",
        ).in_bulk([img["gt_id"] for img in batch if img["gt_id"] is not None])
        decided = _screening_decisions([i["id"] for i in batch if i["screening"] == "kept"])
        notes = images_notes_summary(img["id"] for img in batch)
        for img in batch:
            # Both streams run in image id order; an image added between their two queries
            # has no fold of its own and goes to fold 0.
            while fold is not None and fold[0] < img["id"]:
                fold = next(folds, None)
            row = _export_row(
                img,
                gts.get(img["gt_id"]),
                fold[1] if fold and fold[0] == img["id"] else 0,
                notes.get(img["id"], ("", "")),
            )
            yield replace(row, screening=_screening_cell(img, decided.get(img["id"])))


def _screening_decisions(image_ids: list[int]) -> dict[int, ScreeningDecision]:
    """The newest screening decision of each of these images."""
    decisions: dict[int, ScreeningDecision] = {}
    rows = ScreeningDecision.objects.filter(image_id__in=image_ids).select_related("decided_by")
    for d in rows.order_by("image_id", "-id"):
        decisions.setdefault(d.image_id, d)
    return decisions


def _screening_cell(img: dict[str, Any], decision: ScreeningDecision | None) -> str:
    """metadata.csv's screening column: the state, the flags and, once decided, who kept the
    image, when and why, e.g. 'kept: near_duplicate (9 bits from image 3); by boss on
    2026-12-01: another projection'."""
    state = img["screening"]
    if state == Screening.CLEAR:
        return state
    flags = ", ".join(f"{f['code']} ({f['detail']})" for f in img["screening_flags"])
    cell = f"{state}: {flags}"
    if decision is not None:
        when = decision.created_at.date().isoformat()
        cell += f"; by {decision.decided_by.get_username()} on {when}"
        if decision.reason:
            cell += f": {decision.reason}"
    return cell


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _export_row(
    img: dict[str, Any], gt: GroundTruth | None, fold: int, notes: tuple[str, str] = ("", "")
) -> ExportRow:
    mask = gt.mask if gt else None
    mv = mask.model_version if mask else None
    reviewer = ""
    if gt is not None:
        who = gt.decision.reviewer if gt.decision else (gt.accepted_by or (mask and mask.author))
        reviewer = who.get_username() if who else ""
    stem = img["name"].rsplit(".", 1)[0].replace("/", "_")
    item = gt.item if gt else None
    return ExportRow(
        image_id=img["id"],
        image_name=f"{img['id']:06d}_{stem}",
        image_path=img["original"],
        image_ext=img["original"].rsplit(".", 1)[-1],
        mask_path=mask.file.name if mask else None,
        image_class=img["image_class"],
        patient_id=img["patient_id"],
        source=img["source"],
        width=img["width"],
        height=img["height"],
        sha256=img["sha256"],
        mask_source=mask.source if mask else "",
        round=item.round.number if item else None,
        stage=item.round.stage if item else "",
        decision_id=gt.decision_id if gt else None,
        reviewer=reviewer,
        model=f"{mv.arch}/{mv.encoder} v{mv.pk}" if mv else "",
        agreement=item.agreement if item else None,
        fold=fold,
        mask_created=mask.created_at if mask else None,
        flags=notes[0],
        comments=notes[1],
        study_uid=img["study_uid"] or "",
        series_uid=img["series_uid"] or "",
        sop_instance_uid=img["sop_instance_uid"] or "",
    )


def _export_folds(images: QuerySet[Image]) -> Iterator[tuple[int, int]]:
    """(image id, fold) for the images, in id order, computed by the database.

    Patients (an image without a patient id is a patient of its own) are dealt round-robin
    into min(5, images) folds within their class, in an order fixed by a hash of the patient
    id: every image of a patient shares a fold, and each class is spread evenly.
    """
    n = images.count()
    k = max(1, min(5, n))
    ids_sql, params = images.order_by().values("id").query.sql_with_params()
    image = connection.ops.quote_name(Image._meta.db_table)
    order = "md5(pkey)" if connection.vendor == "postgresql" else "pkey"
    sql = f"""
        WITH sel AS (
            SELECT id, image_class,
                   COALESCE(NULLIF(patient_id, ''), 'image-' || CAST(id AS TEXT)) AS pkey
            FROM {image} WHERE id IN ({ids_sql})
        ),
        patients AS (SELECT pkey, MIN(image_class) AS cls FROM sel GROUP BY pkey),
        dealt AS (
            SELECT pkey, ROW_NUMBER() OVER (PARTITION BY cls ORDER BY {order}, pkey) - 1 AS r
            FROM patients
        )
        SELECT sel.id, dealt.r %% %s FROM sel JOIN dealt ON dealt.pkey = sel.pkey ORDER BY sel.id
    """
    with connection.chunked_cursor() as cursor:
        cursor.execute(sql, [*params, k])
        while rows := cursor.fetchmany(EXPORT_CHUNK):
            for image_id, fold in rows:
                yield image_id, int(fold)


# The source of an image's accepted mask, as the export preview counts it.
PREVIEW_SOURCES = {
    "manual": "Drawn by an MD, accepted",
    "machine": "Machine mask, accepted",
    "redrawn": "Redrawn after review",
    "control": "Empty (control class)",
    "none": "No mask",
}
# Why an image without an accepted mask is left out, by its status.
LEFT_OUT_REASONS = {
    Image.Status.UNANNOTATED: "{n} with no mask yet (nobody has drawn one)",
    Image.Status.MANUAL: "{n} whose drawn mask awaits review (start a round)",
    Image.Status.IN_ROUND: "{n} in a round whose candidates are being made",
    Image.Status.IN_REVIEW: "{n} in blind review now",
    Image.Status.REDRAW: "{n} waiting for an MD's redraw",
    Image.Status.ACCEPTED: "{n} without an accepted mask",
    "other_round": "{n} with a mask accepted in another round or outside a round",
}


def _images(n: int) -> str:
    return f"{n} image{'' if n == 1 else 's'}"


def export_preview(filters: dict[str, Any]) -> dict[str, Any]:
    """What an export with these (clean) filters would hold, before it is built: images by
    class and by the source of their accepted mask, and the images the filters leave out and
    why. One aggregate query over images and their newest ground truth, whatever the size."""
    gt = connection.ops.quote_name(GroundTruth._meta.db_table)
    image = connection.ops.quote_name(Image._meta.db_table)
    mask = connection.ops.quote_name(Mask._meta.db_table)
    item = connection.ops.quote_name(ReviewItem._meta.db_table)
    rnd = connection.ops.quote_name(Round._meta.db_table)
    where, params = "", []
    if filters.get("classes"):
        where = f"WHERE i.image_class IN ({', '.join(['%s'] * len(filters['classes']))})"
        params = list(filters["classes"])
    sql = f"""
        WITH cur AS (SELECT image_id, MAX(id) AS id FROM {gt} GROUP BY image_id)
        SELECT i.image_class, i.status, m.source, g.decision_id IS NULL, r.number, COUNT(*)
        FROM {image} i
        LEFT JOIN cur ON cur.image_id = i.id
        LEFT JOIN {gt} g ON g.id = cur.id
        LEFT JOIN {mask} m ON m.id = g.mask_id
        LEFT JOIN {item} it ON it.id = g.item_id
        LEFT JOIN {rnd} r ON r.id = it.round_id
        {where}
        GROUP BY 1, 2, 3, 4, 5
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        groups = cursor.fetchall()
    classes = [c for c in ImageClass.values if c in (filters.get("classes") or ImageClass.values)]
    by_class = {c: {s: 0 for s in list(PREVIEW_SOURCES)} for c in classes}
    missing: dict[str, int] = {}
    other_rounds = 0
    wanted_round = filters.get("round")
    for image_class, status, source, undecided, round_number, n in groups:
        if source is None:
            kind = "none"
        elif source == Mask.Source.CONTROL:
            kind = "control"
        elif source == Mask.Source.PREDICTED:
            kind = "machine"
        else:  # drawn or imported: accepted by a pick, or a redraw (accepted by drawing it)
            kind = "redrawn" if undecided and round_number is not None else "manual"
        if wanted_round is not None and round_number != wanted_round:
            if kind != "none":
                other_rounds += n
            else:  # the round filter keeps only images accepted in it
                missing[status] = missing.get(status, 0) + n
            continue
        if kind == "none" and filters.get("accepted_only", True):
            missing[status] = missing.get(status, 0) + n
            continue
        by_class.setdefault(image_class, {s: 0 for s in list(PREVIEW_SOURCES)})
        by_class[image_class][kind] += n
    labels = dict(ImageClass.choices)
    rows: list[dict[str, Any]] = [
        {"class": c, "label": labels.get(c, c), **counts, "total": sum(counts.values())}
        for c, counts in by_class.items()
    ]
    totals = {s: sum(int(r[s]) for r in rows) for s in [*PREVIEW_SOURCES, "total"]}
    left_out = [
        {"reason": status, "count": n, "text": LEFT_OUT_REASONS[status].format(n=_images(n))}
        for status, n in sorted(missing.items(), key=lambda kv: -kv[1])
    ]
    if other_rounds:
        left_out.append(
            {
                "reason": "other_round",
                "count": other_rounds,
                "text": LEFT_OUT_REASONS["other_round"].format(n=_images(other_rounds)),
            }
        )
    return {
        "filters": filters,
        "filters_text": export_filters_text(filters),
        "images": totals["total"],
        "rows": rows,
        "totals": totals,
        "sources": PREVIEW_SOURCES,
        "left_out": left_out,
    }


def export_filters_text(filters: dict[str, Any]) -> str:
    """An export's filters in words, e.g. "COVID-19 and Normal images accepted in round 3"."""
    labels = dict(ImageClass.choices)
    classes = filters.get("classes") or []
    if classes and len(classes) < len(ImageClass.values):
        names = [labels.get(c, c) for c in classes]
        what = " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]
        text = f"{what} images"
    else:
        text = "All classes"
    if filters.get("round") is not None:
        text += f", masks accepted in round {filters['round']}"
    elif filters.get("accepted_only", True):
        text += ", with an accepted mask"
    else:
        text += ", with or without a mask"
    if filters.get("format") and filters["format"] != "png":
        text += f"; {str(filters['format']).upper()} format"
    return text
