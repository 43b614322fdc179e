"""Every change to images, masks, rounds, review items, decisions, ground truth and exports.

Services write; selectors read. A service validates, changes rows inside one transaction and
raises a DomainError with a message for the user when a rule would be broken. One module per
domain; the names most callers need are re-exported here.
"""

from annotation.services.accounts import user_set_roles
from annotation.services.exports import (
    export_build,
    export_fail,
    export_filters_clean,
    export_request,
)
from annotation.services.images import (
    DRAWABLE,
    DuplicateImage,
    image_create,
    image_refresh_status,
    images_refresh_status,
    latest_manual_mask,
    mask_create,
    mask_draw,
    starting_mask_save,
)
from annotation.services.imports import import_fail, import_job_create, import_run
from annotation.services.leases import (
    item_claim,
    item_skip,
    lease_release,
    lease_renew,
    lease_take,
)
from annotation.services.notes import image_comment_add, image_flags_set
from annotation.services.pretrain import encoder_pretrain_start
from annotation.services.review import decision_adjudicate, decision_create, decision_undo
from annotation.services.rounds import (
    candidate_add,
    round_advance,
    round_cancel,
    round_open_batch,
    round_start,
    round_withdraw_batch,
)
from annotation.services.screening import screening_decide

__all__ = [
    "starting_mask_save",
    "DRAWABLE",
    "DuplicateImage",
    "candidate_add",
    "decision_adjudicate",
    "decision_create",
    "decision_undo",
    "encoder_pretrain_start",
    "export_build",
    "export_fail",
    "export_filters_clean",
    "export_request",
    "image_comment_add",
    "image_create",
    "import_fail",
    "import_job_create",
    "import_run",
    "image_flags_set",
    "image_refresh_status",
    "images_refresh_status",
    "item_claim",
    "item_skip",
    "latest_manual_mask",
    "lease_release",
    "lease_renew",
    "lease_take",
    "mask_create",
    "mask_draw",
    "round_advance",
    "round_cancel",
    "round_open_batch",
    "round_start",
    "round_withdraw_batch",
    "screening_decide",
    "user_set_roles",
]
