"""Starting the self-supervised pretraining of an encoder on the platform's own CXRs."""

from __future__ import annotations

from typing import Any

from annotation.errors import DomainError
from annotation.services.planning import _screened
from training import services as training_services
from training.models import PretrainedEncoder


def encoder_pretrain_start(
    *,
    encoder: str,
    preset: str,
    started_by: Any = None,
    overrides: dict[str, Any] | None = None,
) -> PretrainedEncoder:
    """Pretrains `encoder` on every image a round may use (labelled or not: screening passed
    or kept), on the training queue once committed.

    Raises:
        DomainError: unknown encoder, preset or option, or no images yet.
    """
    images = dict(_screened().exclude(display="").values_list("pk", "display"))
    try:
        return training_services.pretrain_create(
            encoder=encoder,
            preset=preset,
            images=images,
            started_by=started_by,
            overrides=overrides,
        )
    except training_services.PretrainError as exc:
        raise DomainError(str(exc)) from None
