import fnmatch
import logging
import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("maskloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)

# One quick try and one reconnect (a pooled connection may predate a broker restart): a
# request that enqueues must answer at once, the outbox keeps what could not be published.
PUBLISH: dict[str, Any] = {
    "retry": True,
    "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
}


def send(task_name: str, *args: Any) -> None:
    """Enqueues a task by name, so the sender needs no import of the app that runs it.

    This is how the apps talk across the round loop without importing each other's services:
    annotation enqueues training and inference work, and the workers report back to
    annotation (see annotation/tasks.py).

    Inside a transaction the message is written to the outbox (config/outbox.py) with the rows
    it is about and published once they are committed, so a task never sees uncommitted rows
    and a rolled-back transaction sends nothing. Outside one it is published at once. Either
    way a broker that is down raises nothing here: the message waits in the outbox and the
    reconciler publishes it when the broker is back.

    Where the task is registered in this process and `task_always_eager` is on (in-process
    tests), it runs at once, or when the transaction commits, as `delay_on_commit` would.
    """
    from django.db import transaction

    if app.conf.task_always_eager:
        signature = app.signature(task_name, args=args)
        if _in_transaction():
            transaction.on_commit(signature.apply_async)
        else:
            signature.apply_async()
        return

    from config import outbox

    if _in_transaction():
        message = outbox.outbox_add(task_name=task_name, args=list(args))
        transaction.on_commit(lambda: outbox.outbox_publish(message_id=message.pk), robust=True)
        return
    try:
        publish(task_name, list(args))
    except Exception as exc:  # whatever the transport raises: the outbox keeps the message
        log.warning("broker unreachable, %s%s kept in the outbox: %s", task_name, tuple(args), exc)
        outbox.outbox_add(task_name=task_name, args=list(args), error=exc)


def _in_transaction() -> bool:
    """Inside a transaction of the caller's own. The one a test case wraps around each test
    does not count: it never commits (Django's durable blocks judge it so too)."""
    from django.db import connection

    return any(not block._from_testcase for block in connection.atomic_blocks)  # type: ignore[attr-defined]


def publish(task_name: str, args: list[Any]) -> None:
    """Publishes one message to the broker now; raises whatever the transport raises."""
    app.signature(task_name, args=args).apply_async(**PUBLISH)


def queue_size(name: str) -> int | None:
    """How many messages wait in the named queue, or None when the broker cannot tell (down).

    Messages that a worker has taken but not acknowledged are not counted.
    """
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            channel: Any = conn.default_channel
            return int(channel.queue_declare(queue=name).message_count)
    except Exception as exc:  # the reconciler acts only on what it can see
        log.warning("cannot read the size of queue %s: %s", name, exc)
        return None


def queue_of(task_name: str) -> str:
    """The queue a task is routed to (settings.CELERY_TASK_ROUTES)."""
    for pattern, route in (app.conf.task_routes or {}).items():
        if fnmatch.fnmatchcase(task_name, pattern):
            return route["queue"]
    return app.conf.task_default_queue


class TimeLimits:
    """Gives every task its queue's time limit (settings.MASKLOOP_TIME_LIMITS), and a soft limit
    a minute or 5 % earlier, whichever is longer, so that the task can still fail in words.

    Named in CELERY_TASK_ANNOTATIONS; a task's own limits win.
    """

    def annotate(self, task: Any) -> dict[str, int] | None:
        from django.conf import settings

        limit = settings.MASKLOOP_TIME_LIMITS.get(queue_of(task.name))
        if not limit or task.time_limit is not None or task.soft_time_limit is not None:
            return None
        return {"time_limit": limit, "soft_time_limit": limit - max(60, limit // 20)}
