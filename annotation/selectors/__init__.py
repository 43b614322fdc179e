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
from annotation.selectors.drawing import (
    draw_closed_reason,
    latest_drawing_by,
    next_image_to_draw,
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
    PROVENANCE_SEALED_REASON,
    UNDER_REVIEW,
    UNDER_REVIEW_REASON,
    MdQueue,
    authored_by,
    blind_item_payload,
    claimable_items,
    first_display_images,
    held_leases_for,
    image_under_review,
    image_under_review_by_content,
    images_to_draw,
    item_candidates,
    item_slots,
    maps_hidden_from,
    md_queue,
    open_items_for,
    redraw_items,
    redraw_start_candidates,
    review_context,
    review_count_for,
    reviewing_rounds,
    under_review,
)
from annotation.selectors.round_start import (
    StartOption,
    ground_truth_counts,
    round_start_options,
    rounds_with_shown_status,
)
from annotation.selectors.rounds import (
    BULK_TASKS,
    final_round,
    predicted_image_ids,
    pretrainings_recent,
    round_bulk_steps,
    round_statistics,
)
from annotation.selectors.screening import screening_counts, screening_flagged

__all__ = [
    "pretrainings_recent",
    "review_context",
    "BULK_TASKS",
    "EXPORT_CHUNK",
    "MdQueue",
    "PROVENANCE_SEALED_REASON",
    "StartOption",
    "UNDER_REVIEW",
    "UNDER_REVIEW_REASON",
    "authored_by",
    "blind_item_payload",
    "claimable_items",
    "current_ground_truths",
    "draw_closed_reason",
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
    "ground_truth_counts",
    "first_display_images",
    "held_leases_for",
    "image_under_review",
    "image_under_review_by_content",
    "images_to_draw",
    "item_candidates",
    "item_slots",
    "latest_drawing_by",
    "maps_hidden_from",
    "md_queue",
    "next_image_to_draw",
    "open_items_for",
    "predicted_image_ids",
    "redraw_items",
    "redraw_start_candidates",
    "review_count_for",
    "reviewing_rounds",
    "round_bulk_steps",
    "round_start_options",
    "rounds_with_shown_status",
    "round_statistics",
    "screening_counts",
    "screening_flagged",
    "under_review",
    "user_has_role",
    "user_roles",
]
