"""Celery tasks of the `training` queue: thin wrappers that call one service."""

from celery import shared_task
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
def train(self, run_id: int) -> str:
    try:
        return services.training_run_execute(run_id=run_id)
    except OperationalError:
        raise
    except Exception as exc:
        send("annotation.tasks.run_failed", run_id, f"{type(exc).__name__}: {exc}")
        return f"run {run_id} failed: {exc}"
