"""Celery tasks of the `inference` queue: thin wrappers that call one service and report a
failure to annotation by task name."""

from typing import TypedDict

from celery import shared_task
from django.db import OperationalError

from config.celery import send
from inference import services


class _Retried(TypedDict):  # shared_task's options, spelled so that mypy can check them
    acks_late: bool
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: int


RETRY: _Retried = {"acks_late": True, "autoretry_for": (OperationalError,), "retry_backoff": 5}


@shared_task(**RETRY, max_retries=3)
def predict(run_id: int) -> str:
    try:
        return services.run_predict(run_id=run_id)
    except OperationalError:
        raise
    except Exception as exc:
        send(
            "annotation.tasks.run_failed", run_id, f"prediction failed: {type(exc).__name__}: {exc}"
        )
        return f"run {run_id} failed while predicting: {exc}"


@shared_task(**RETRY, max_retries=3)
def evaluate(run_id: int) -> str:
    try:
        return services.run_evaluate(run_id=run_id)
    except OperationalError:
        raise
    except Exception as exc:
        send(
            "annotation.tasks.run_failed", run_id, f"evaluation failed: {type(exc).__name__}: {exc}"
        )
        return f"run {run_id} failed while evaluating: {exc}"
