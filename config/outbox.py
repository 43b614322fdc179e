"""The outbox: messages written with the rows they are about, published once committed.

`config.celery.send` writes one inside a transaction and publishes it on commit; a message the
broker did not take (down, unreachable, restarting) stays unsent and the reconciler
(annotation/services/reconcile.py) publishes it with `outbox_flush`. A message may so be
published twice (the broker took it but the row was not marked): every task is idempotent.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from config.models import OutboxMessage

log = logging.getLogger(__name__)

KEEP_SENT = timedelta(days=1)  # sent messages are kept this long, for looking into


def outbox_add(*, task_name: str, args: list[Any], error: Exception | None = None) -> OutboxMessage:
    return OutboxMessage.objects.create(
        task_name=task_name,
        args=args,
        attempts=1 if error else 0,
        last_error=_words(error) if error else "",
    )


def _words(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _try(message: OutboxMessage) -> bool:
    """Publishes a locked, unsent message and records the outcome on it."""
    from config.celery import publish

    try:
        publish(message.task_name, list(message.args))
    except Exception as exc:  # whatever the transport raises; the reconciler tries again
        log.warning("broker unreachable, outbox message %s waits: %s", message, exc)
        OutboxMessage.objects.filter(pk=message.pk).update(
            attempts=F("attempts") + 1, last_error=_words(exc)
        )
        return False
    OutboxMessage.objects.filter(pk=message.pk).update(
        sent_at=timezone.now(), attempts=F("attempts") + 1
    )
    return True


def outbox_publish(*, message_id: int) -> bool:
    """Publishes one message unless it was sent already or is being sent by someone else.

    Returns:
        Whether this call published it.
    """
    with transaction.atomic():
        message = (
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(pk=message_id, sent_at=None)
            .first()
        )
        return message is not None and _try(message)


def outbox_flush(*, older_than: timedelta, limit: int = 500) -> dict[str, int]:
    """Publishes the messages left unsent for longer than `older_than`, oldest first, and
    forgets those sent long ago. Stops at the first broker error: the rest wait for the next
    pass.

    Returns:
        {"sent": n, "waiting": m}: published now, and still unsent.
    """
    sent = 0
    cutoff = timezone.now() - older_than
    with transaction.atomic():
        pending = list(
            OutboxMessage.objects.select_for_update(skip_locked=True)
            .filter(sent_at=None, created_at__lt=cutoff)
            .order_by("id")[:limit]
        )
        for message in pending:
            if not _try(message):
                break
            sent += 1
    OutboxMessage.objects.filter(sent_at__lt=timezone.now() - KEEP_SENT).delete()
    return {"sent": sent, "waiting": OutboxMessage.objects.filter(sent_at=None).count()}
