"""The outbox: Celery messages written in the same transaction as the rows they are about.

`config.celery.send` records one here and tries to publish it once the transaction commits;
if the broker is down then, the reconciler publishes it later, so nothing is lost and no
request fails because Redis is away.
"""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    task_name = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["sent_at", "id"], name="outbox_unsent")]

    def __str__(self) -> str:
        state = "sent" if self.sent_at else "unsent"
        return f"{self.task_name}{tuple(self.args)} ({state})"
