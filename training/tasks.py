"""Celery tasks of the `training` queue: thin wrappers that call one service."""

from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import OperationalError

from config.celery import send
from training import services


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=5,
    max_retries=3,
)
def train(self, run_id: int, attempt: int | None = None) -> str:
    try:
        return services.training_run_execute(run_id=run_id, attempt=attempt)
    except OperationalError:
        raise
    except services.AttemptLost as exc:
        return f"{exc}; stopped without a report"  # the newer attempt reports
    except SoftTimeLimitExceeded:
        hours = settings.MASKLOOP_TIME_LIMITS["training"] / 3600
        reason = f"training ran past its time limit of {hours:g} h (MASKLOOP_TRAINING_TIME_LIMIT)"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    send("annotation.tasks.run_failed", run_id, reason, attempt)
    return f"run {run_id} failed: {reason}"


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(OperationalError,),
    retry_backoff=5,
    max_retries=3,
)
def pretrain(self, pretrain_id: int, attempt: int | None = None) -> str:
    """Self-supervised pretraining of an encoder (training.nets.pretrain) as delivery
    `attempt`; a superseded attempt does nothing, and its failure is dropped."""
    try:
        return services.pretrain_execute(pretrain_id=pretrain_id, attempt=attempt)
    except OperationalError:
        raise
    except SoftTimeLimitExceeded:
        hours = settings.MASKLOOP_TIME_LIMITS["training"] / 3600
        reason = (
            f"pretraining ran past its time limit of {hours:g} h (MASKLOOP_TRAINING_TIME_LIMIT)"
        )
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    services.pretrain_fail(pretrain_id=pretrain_id, reason=reason, attempt=attempt)
    return f"pretraining {pretrain_id} failed: {reason}"
