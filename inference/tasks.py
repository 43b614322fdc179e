"""Celery tasks of the `inference` queue."""

from celery import shared_task
from django.db import OperationalError

from inference import services


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=5, max_retries=3)
def predict(run_id: int) -> str:
    try:
        return services.run_predict(run_id=run_id)
    except OperationalError:
        raise
    except Exception as exc:
        services.run_predict_fail(
            run_id=run_id, reason=f"prediction failed: {type(exc).__name__}: {exc}"
        )
        return f"run {run_id} failed while predicting: {exc}"
