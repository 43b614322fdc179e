"""The round state machine: every status change of a Round, its TrainingRuns and ReviewItems.

    Round        training ──► reviewing ──► done
                    │   └─────────────────► done         a final round has nothing to review
                    ├──► failed                          a run failed (its reason is kept)
                    └──► cancelled ◄── reviewing         an admin stopped it

    TrainingRun  queued ──► training ──► predicting ──► succeeded
                    └────────────────────┘               "trained" may overtake "started"
                 queued | training | predicting ──► failed | cancelled

    ReviewItem   pending ──► open ──► accepted | redraw | adjudication
                 adjudication ──► accepted | redraw      an admin broke the tie
                 redraw ──► redrawn                      the MD drew the mask instead
                 pending | open | adjudication ──► cancelled

Only `annotation` moves these rows, through `move` and `move_all`; the training and inference
workers report what happened by Celery task name (annotation/tasks.py) and never write a
status themselves. The caller holds the row's lock (select_for_update).

Lock order, everywhere: Round, then TrainingRun, then ReviewItem, then Image.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Model, QuerySet

from annotation.errors import Conflict
from annotation.models import ReviewItem, Round
from training.models import TrainingRun

R, T, It = Round.Status, TrainingRun.Status, ReviewItem.Status

ROUND: dict[str, set[str]] = {
    R.TRAINING: {R.REVIEWING, R.DONE, R.FAILED, R.CANCELLED},
    R.REVIEWING: {R.DONE, R.CANCELLED},
}
RUN: dict[str, set[str]] = {
    T.QUEUED: {T.TRAINING, T.PREDICTING, T.FAILED, T.CANCELLED},
    T.TRAINING: {T.PREDICTING, T.FAILED, T.CANCELLED},
    T.PREDICTING: {T.SUCCEEDED, T.FAILED, T.CANCELLED},
}
ITEM: dict[str, set[str]] = {
    It.PENDING: {It.OPEN, It.CANCELLED},
    It.OPEN: {It.ACCEPTED, It.REDRAW, It.ADJUDICATION, It.CANCELLED},
    It.ADJUDICATION: {It.ACCEPTED, It.REDRAW, It.CANCELLED},
    It.REDRAW: {It.REDRAWN},
}
MACHINES: dict[type[Model], dict[str, set[str]]] = {
    Round: ROUND,
    TrainingRun: RUN,
    ReviewItem: ITEM,
}


class IllegalTransition(Conflict):
    pass


def can_move(obj: Any, to: str) -> bool:
    return to in MACHINES[type(obj)].get(obj.status, set())


def move(obj: Any, to: str, **fields: Any) -> None:
    """Moves one locked row to status `to`, saving `fields` with it.

    Raises:
        IllegalTransition: the state machine has no such step (the message says which).
    """
    if not can_move(obj, to):
        raise IllegalTransition(f"{obj} cannot go from {obj.status} to {to}")
    obj.status = to
    for name, value in fields.items():
        setattr(obj, name, value)
    obj.save(update_fields=["status", *fields])


def move_all(rows: QuerySet, to: str, **fields: Any) -> int:
    """Moves every row of `rows` that may go to `to` (the others stay); returns how many."""
    machine = MACHINES[rows.model]
    sources = [status for status, targets in machine.items() if to in targets]
    return rows.filter(status__in=sources).update(status=to, **fields)
