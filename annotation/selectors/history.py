"""An image's notes (comments and flags) and its whole history, for the pages and the export.

Who sees what: admins and the data team see every comment and flag. An MD sees only their own,
on every page: a colleague's comment shown beside a blind review ("redrew the left base",
"the model missed this") could say which candidate is whose, and hiding notes on one page only
would be a rule easy to break on the next.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from annotation.models import (
    Decision,
    GroundTruth,
    Image,
    ImageComment,
    ImageFlag,
    ImageFlagChange,
    Mask,
    ReviewItem,
    Role,
)
from annotation.selectors.accounts import user_has_role


def notes_see_all(user: Any) -> bool:
    return user_has_role(user, Role.ADMIN, Role.DATA)


def image_notes(image: Image, *, viewer: Any) -> dict[str, Any]:
    """The comments (oldest first) and current flags of an image that `viewer` may see."""
    comments = ImageComment.objects.filter(image=image).select_related("author").order_by("id")
    changes = ImageFlagChange.objects.filter(image=image).select_related("author").order_by("id")
    if not notes_see_all(viewer):
        comments = comments.filter(author=viewer)
        changes = changes.filter(author=viewer)
    state: dict[tuple[str, str], bool] = {}
    for change in changes:
        state[(change.flag, change.author.get_username())] = change.is_set
    flags = [
        {
            "flag": flag,
            "name": label,
            "mine": state.get((flag, viewer.get_username()), False),
            "set_by": sorted(u for (f, u), on in state.items() if f == flag and on),
        }
        for flag, label in ImageFlag.choices
    ]
    return {
        "comments": [
            {"by": c.author.get_username(), "text": c.text, "created_at": c.created_at}
            for c in comments
        ],
        "flags": flags,
        "see_all": notes_see_all(viewer),
    }


def images_notes_summary(image_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """(flags, comments) as text per image for the export's metadata.csv: the flags that any
    user has set now, by name, joined with ";"; the comments oldest first as "user: text",
    joined with " | ". Two queries for the whole batch."""
    ids = list(image_ids)
    state: dict[int, dict[tuple[str, int], bool]] = defaultdict(dict)
    for image_id, flag, author_id, is_set in (
        ImageFlagChange.objects.filter(image_id__in=ids)
        .order_by("id")
        .values_list("image_id", "flag", "author_id", "is_set")
    ):
        state[image_id][(flag, author_id)] = is_set
    comments: dict[int, list[str]] = defaultdict(list)
    for image_id, author, text in (
        ImageComment.objects.filter(image_id__in=ids)
        .order_by("id")
        .values_list("image_id", "author__username", "text")
    ):
        comments[image_id].append(f"{author}: {' '.join(text.split())}")
    out: dict[int, tuple[str, str]] = {}
    for image_id in set(state) | set(comments):
        flags = sorted({f for (f, _), on in state[image_id].items() if on})
        out[image_id] = (";".join(flags), " | ".join(comments[image_id]))
    return out


@dataclass(frozen=True)
class HistoryEvent:
    at: datetime
    kind: str  # mask, decision, ground truth, comment, flag, round
    who: str
    what: str
    link: str = ""


def image_history(image: Image) -> list[HistoryEvent]:
    """Every mask version, review item, decision, ground truth, comment and flag change of one
    image, with who and when, newest first. For admins and the data team only: it names the
    sources of masks."""
    events: list[HistoryEvent] = []
    masks = Mask.objects.filter(image=image).select_related(
        "author", "model_version", "round", "based_on"
    )
    for m in masks:
        if m.source == Mask.Source.PREDICTED and m.model_version:
            who = f"{m.model_version.arch}/{m.model_version.encoder} v{m.model_version.pk}"
        else:
            who = m.author.get_username() if m.author else ""
        what = f"Mask v{m.version}: {m.get_source_display().lower()}, {m.area} px"
        if m.round:
            what += f", round {m.round.number}"
        if m.based_on:
            what += f", started from v{m.based_on.version}"
        events.append(HistoryEvent(m.created_at, "mask", who, what))
    for item in ReviewItem.objects.filter(image=image).select_related("round"):
        events.append(
            HistoryEvent(
                item.created_at,
                "review",
                "",
                f"Put up for review in round {item.round.number} "
                f"({item.round.get_stage_display()}); now {item.get_status_display().lower()}",
            )
        )
    decisions = Decision.objects.filter(item__image=image).select_related(
        "reviewer", "item__round", "candidate__mask"
    )
    for d in decisions:
        if d.candidate is None:
            pick = "none of the candidates (redraw)"
        else:
            pick = f"candidate {d.candidate.label} = mask v{d.candidate.mask.version}"
        verb = "Broke the tie with" if d.is_adjudication else "Picked"
        events.append(
            HistoryEvent(
                d.created_at,
                "decision",
                d.reviewer.get_username(),
                f"{verb} {pick} in round {d.item.round.number} ({d.seconds:.0f} s)",
            )
        )
    gts = GroundTruth.objects.filter(image=image).select_related(
        "mask", "accepted_by", "decision__reviewer", "item__round"
    )
    for gt in gts:
        who_user = gt.decision.reviewer if gt.decision else gt.accepted_by
        how = f" in round {gt.item.round.number}" if gt.item else ""
        events.append(
            HistoryEvent(
                gt.created_at,
                "ground truth",
                who_user.get_username() if who_user else "",
                f"Mask v{gt.mask.version} ({gt.mask.get_source_display().lower()}) accepted{how}",
            )
        )
    for c in ImageComment.objects.filter(image=image).select_related("author"):
        events.append(HistoryEvent(c.created_at, "comment", c.author.get_username(), c.text))
    labels = dict(ImageFlag.choices)
    for f in ImageFlagChange.objects.filter(image=image).select_related("author"):
        verb = "Flagged" if f.is_set else "Cleared the flag"
        events.append(
            HistoryEvent(
                f.created_at,
                "flag",
                f.author.get_username(),
                f"{verb} “{labels.get(f.flag, f.flag)}”",
            )
        )
    events.append(
        HistoryEvent(image.created_at, "image", "", f"Imported from {image.source or 'upload'}")
    )
    events.sort(key=lambda e: e.at, reverse=True)
    return events


def recently_noted_images(limit: int = 20) -> list[dict[str, Any]]:
    """The images most recently commented on or flagged, newest first: the exports page lists
    them with links to their history."""
    latest: dict[int, datetime] = {}
    for model in (ImageComment, ImageFlagChange):
        for image_id, at in model.objects.order_by("-id").values_list("image_id", "created_at")[
            : limit * 4
        ]:
            if image_id not in latest or at > latest[image_id]:
                latest[image_id] = at
    ids = sorted(latest, key=lambda i: latest[i], reverse=True)[:limit]
    summary = images_notes_summary(ids)
    names = dict(Image.objects.filter(pk__in=ids).values_list("pk", "name"))
    return [
        {
            "id": i,
            "name": names.get(i, ""),
            "at": latest[i],
            "flags": summary.get(i, ("", ""))[0],
            "comments": summary.get(i, ("", ""))[1],
        }
        for i in ids
    ]
