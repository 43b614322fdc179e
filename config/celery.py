import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("maskloop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def send(task_name: str, *args: Any) -> None:
    """Enqueues a task by name, so the sender needs no import of the app that runs it.

    This is how the apps talk across the round loop without importing each other's services:
    annotation enqueues training and inference work, and the workers report back to
    annotation (see annotation/tasks.py). Where the task is registered in this process and
    `task_always_eager` is on (in-process tests), it runs at once, as `delay` would.
    """
    app.signature(task_name, args=args).apply_async()
