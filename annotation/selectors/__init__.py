"""Reads: what the pages and the API show. Nothing here changes a row.

One module per domain: accounts (roles), review (the MD's queue, leases, the blind item),
rounds (statistics, bulk steps, predictions) and exports (streamed rows, current ground
truth). Callers import from `annotation.selectors`.
"""

from __future__ import annotations

from annotation.selectors.accounts import (
    user_has_role,
    user_roles,
)
from annotation.selectors.exports import (
    EXPORT_CHUNK,
    current_ground_truths,
    export_count,
    export_filters_text,
    export_images,
    export_preview,
    export_rows,
)
from annotation.selectors.history import (
    HistoryEvent,
    image_history,
    image_notes,
    images_notes_summary,
    recently_noted_images,
)
from annotation.selectors.review import (
    UNDER_REVIEW,
    UNDER_REVIEW_REASON,
    MdQueue,
    authored_by,
    blind_item_payload,
    claimable_items,
    first_display_images,
    held_leases_for,
    image_under_review,
    images_to_draw,
    item_candidates,
    item_slots,
    maps_hidden_from,
    md_queue,
    open_items_for,
    redraw_items,
    redraw_start_candidates,
    review_count_for,
    reviewing_rounds,
    under_review,
)
from annotation.selectors.rounds import (
    BULK_TASKS,
    final_round,
    predicted_image_ids,
    round_bulk_steps,
    round_statistics,
)

__all__ = [
    "BULK_TASKS",
    "EXPORT_CHUNK",
    "MdQueue",
    "UNDER_REVIEW",
    "UNDER_REVIEW_REASON",
    "authored_by",
    "blind_item_payload",
    "claimable_items",
    "current_ground_truths",
    "export_count",
    "export_images",
    "export_filters_text",
    "export_preview",
    "export_rows",
    "HistoryEvent",
    "image_history",
    "image_notes",
    "images_notes_summary",
    "recently_noted_images",
    "final_round",
    "first_display_images",
    "held_leases_for",
    "image_under_review",
    "images_to_draw",
    "item_candidates",
    "item_slots",
    "maps_hidden_from",
    "md_queue",
    "open_items_for",
    "predicted_image_ids",
    "redraw_items",
    "redraw_start_candidates",
    "review_count_for",
    "reviewing_rounds",
    "round_bulk_steps",
    "round_statistics",
    "under_review",
    "user_has_role",
    "user_roles",
]
