"""The reconciler and the outbox on the real database and the real Redis broker: what is lost
is sent again as a new attempt, what waits its turn is left alone, and the last loss fails the
run (and its round) with the reason in words. The processes themselves are killed in
tests/e2e/test_faults.py."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from annotation import services
from annotation.models import Export, ImageClass, PacsPull, ReviewItem, Round
from annotation.services import runs
from annotation.services.pacs import pacs_pull_claim, pacs_pull_fail, pacs_pull_run
from annotation.services.reconcile import reconcile
from config.celery import publish, send
from config.models import OutboxMessage
from training.models import PretrainedEncoder, TrainingRun
from training.services import pretrain_execute, pretrain_fail, training_run_claim

pytestmark = pytest.mark.django_db

T = TrainingRun.Status
LONG_AGO = timedelta(minutes=30)


@pytest.fixture
def broker(settings):
    """The test broker, emptied; the limits a test can reason about."""
    if not django_settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://…")
    settings.MASKLOOP_HEARTBEAT_STALE_SECONDS = 60
    settings.MASKLOOP_PREDICTION_STALE_SECONDS = 120
    settings.MASKLOOP_MAX_ATTEMPTS = 3
    settings.MASKLOOP_OUTBOX_GRACE_SECONDS = 10
    client = redis.Redis.from_url(django_settings.CELERY_BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()


def queued(client, queue: str) -> list[tuple[str, str]]:
    """The (task name, args) of the messages waiting in a queue, oldest first."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
    return [(m["headers"]["task"], m["headers"]["argsrepr"]) for m in messages]


@pytest.fixture
def rnd(make_image, md, admin_user):
    for _ in range(4):
        make_image(manual_by=md, size=32)
    return services.round_start(
        stage=Round.Stage.STAGE_I,
        started_by=admin_user,
        folds=2,
        preset="tiny",
        networks=[("unet", "densenet121")],
    )


def silent(run: TrainingRun, **fields) -> TrainingRun:
    """Makes a run look as if nothing was heard of it for half an hour."""
    ago = timezone.now() - LONG_AGO
    TrainingRun.objects.filter(pk=run.pk).update(heartbeat_at=ago, **fields)
    TrainingRun.objects.filter(pk=run.pk).update(created_at=ago)
    run.refresh_from_db()
    return run


def test_starting_a_round_writes_its_trainings_to_the_outbox_and_publishes_them_on_commit(
    broker, make_image, md, admin_user, django_capture_on_commit_callbacks
):
    for _ in range(4):
        make_image(manual_by=md, size=32)
    with django_capture_on_commit_callbacks(execute=True):
        rnd = services.round_start(
            stage=Round.Stage.STAGE_I,
            started_by=admin_user,
            folds=2,
            preset="tiny",
            networks=[("unet", "densenet121")],
        )
        assert OutboxMessage.objects.filter(sent_at=None).count() == 2
    runs_ = list(rnd.training_runs.order_by("pk"))
    assert OutboxMessage.objects.filter(sent_at=None).count() == 0
    assert queued(broker, "training") == [("training.tasks.train", repr((r.pk, 0))) for r in runs_]


def test_the_reconciler_publishes_what_the_broker_did_not_take_at_commit(broker):
    waiting = OutboxMessage.objects.create(task_name="annotation.tasks.run_started", args=[7, 0])
    fresh = OutboxMessage.objects.create(task_name="annotation.tasks.run_started", args=[8, 0])
    OutboxMessage.objects.filter(pk=waiting.pk).update(
        created_at=timezone.now() - timedelta(minutes=1)
    )
    summary = reconcile()
    assert summary["outbox"] == {"sent": 1, "waiting": 1}
    waiting.refresh_from_db()
    fresh.refresh_from_db()
    assert waiting.sent_at is not None and fresh.sent_at is None  # fresh: its commit sends it
    assert queued(broker, "default") == [("annotation.tasks.run_started", "(7, 0)")]


def test_send_outside_a_transaction_publishes_at_once(broker):
    send("annotation.tasks.run_started", 5, 2)
    assert queued(broker, "default") == [("annotation.tasks.run_started", "(5, 2)")]
    assert not OutboxMessage.objects.exists()


def test_one_attempt_holds_a_run_until_its_heartbeat_goes_stale(rnd, settings):
    run = rnd.training_runs.first()
    assert training_run_claim(run_id=run.pk, attempt=0, worker="a:1")
    assert not training_run_claim(run_id=run.pk, attempt=0, worker="b:2")  # a is alive
    assert not training_run_claim(run_id=run.pk, attempt=1, worker="b:2")  # no such attempt
    silent(run)
    assert training_run_claim(run_id=run.pk, attempt=0, worker="b:2")  # a went silent
    run.refresh_from_db()
    assert run.worker == "b:2"


def test_a_run_whose_worker_went_silent_is_sent_again_then_failed_in_words(
    rnd, broker, django_capture_on_commit_callbacks
):
    run, other = rnd.training_runs.order_by("pk")
    TrainingRun.objects.filter(pk=other.pk).update(heartbeat_at=timezone.now(), worker="c:3")
    silent(run, status=T.TRAINING, worker="host-a:11")
    broker.flushdb()

    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["runs_resent"] == [run.pk] and not summary["runs_failed"]
    run.refresh_from_db()
    assert (run.attempt, run.worker, run.status) == (1, "", T.TRAINING)
    assert timezone.now() - run.heartbeat_at < timedelta(seconds=30)
    assert queued(broker, "training") == [("training.tasks.train", repr((run.pk, 1)))]
    assert reconcile()["runs_resent"] == []  # the new attempt has its stale period

    silent(run, worker="host-b:22")
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["runs_resent"] == [run.pk]
    silent(run, worker="host-c:33")
    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["runs_failed"] == [run.pk] and not summary["runs_resent"]
    run.refresh_from_db()
    rnd.refresh_from_db()
    assert run.status == T.FAILED
    assert "the training worker stopped answering 3 times" in run.failure_reason
    assert "on host host-c:33" in run.failure_reason
    assert rnd.status == Round.Status.FAILED and "stopped answering" in rnd.failure_reason


def test_a_queued_run_waiting_its_turn_is_left_alone_until_its_queue_is_empty(rnd, broker):
    run, other = rnd.training_runs.order_by("pk")
    silent(run)  # never claimed, sent half an hour ago
    publish("training.tasks.train", [other.pk, 0])  # the queue still moves
    assert reconcile()["runs_resent"] == []
    run.refresh_from_db()
    assert run.attempt == 0

    broker.flushdb()  # nothing waits: its message is gone
    assert reconcile()["runs_resent"] == [run.pk]
    run.refresh_from_db()
    assert run.attempt == 1
    assert OutboxMessage.objects.filter(task_name="training.tasks.train", args=[run.pk, 1]).exists()


def test_a_run_heard_from_lately_is_left_alone(rnd, broker):
    run = rnd.training_runs.first()
    TrainingRun.objects.filter(pk=run.pk).update(
        status=T.TRAINING, worker="a:1", heartbeat_at=timezone.now() - timedelta(seconds=30)
    )
    assert reconcile()["runs_resent"] == []


def test_a_superseded_attempts_failure_is_dropped(rnd):
    run = rnd.training_runs.first()
    TrainingRun.objects.filter(pk=run.pk).update(attempt=1)
    assert not runs.run_failed(run_id=run.pk, reason="killed by a stale copy", attempt=0)
    run.refresh_from_db()
    assert run.status == T.QUEUED
    assert runs.run_failed(run_id=run.pk, reason="out of memory", attempt=1)
    run.refresh_from_db()
    assert run.status == T.FAILED and run.failure_reason == "out of memory"


def test_a_silent_prediction_is_sent_again_once_the_inference_queue_is_empty(
    rnd, broker, django_capture_on_commit_callbacks
):
    run, _ = rnd.training_runs.order_by("pk")
    silent(run, status=T.PREDICTING)
    publish("inference.tasks.predict", [999])
    assert reconcile()["predictions_resent"] == []
    broker.flushdb()
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["predictions_resent"] == [run.pk]
    # Its targets, none predicted yet, in one shard.
    shard = sorted(run.target_image_ids)
    assert queued(broker, "inference") == [("inference.tasks.predict", repr((run.pk, shard)))]
    run.refresh_from_db()
    assert run.attempt == 1 and run.status == T.PREDICTING


def test_predictions_touch_the_heartbeat(rnd):
    run, _ = rnd.training_runs.order_by("pk")
    silent(run, status=T.PREDICTING)
    from training.models import ModelVersion

    ModelVersion.objects.create(run=run, config=run.config, weights="w.h5", data_version="x")
    runs.run_predictions_add(run_id=run.pk, predictions=[])
    run.refresh_from_db()
    assert timezone.now() - run.heartbeat_at < timedelta(seconds=30)


def test_a_lost_export_is_sent_again_then_failed(data_user, broker):
    export = Export.objects.create(requested_by=data_user, filters={"accepted_only": True})
    Export.objects.filter(pk=export.pk).update(created_at=timezone.now() - LONG_AGO)
    summary = reconcile()
    assert summary["exports_resent"] == [export.pk]
    assert OutboxMessage.objects.filter(
        task_name="annotation.tasks.export_build", args=[export.pk]
    ).exists()
    export.refresh_from_db()
    assert export.attempts == 1  # made by hand, never sent: the resend was its first attempt
    Export.objects.filter(pk=export.pk).update(heartbeat_at=timezone.now() - LONG_AGO, attempts=2)
    assert reconcile()["exports_resent"] == [export.pk]  # its third attempt and last
    Export.objects.filter(pk=export.pk).update(heartbeat_at=timezone.now() - LONG_AGO)
    assert reconcile()["exports_failed"] == [export.pk]
    export.refresh_from_db()
    assert export.status == Export.Status.FAILED
    assert "the export worker stopped answering 3 times" in export.failure_reason


def test_a_silent_chain_of_round_batches_is_sent_again_a_live_one_is_left_alone(
    make_image, md, admin_user, broker, settings
):
    settings.MASKLOOP_BULK_BATCH = 1
    round_ = Round.objects.create(
        number=7, stage=Round.Stage.STAGE_II, started_by=admin_user, status=Round.Status.REVIEWING
    )
    for _ in range(2):
        ReviewItem.objects.create(round=round_, image=make_image(size=32))
    round_.progress = {"step": "opening", "done": 0, "total": 2, "at": timezone.now().isoformat()}
    round_.save()
    assert reconcile()["round_steps_resent"] == []  # its last batch ended just now

    round_.progress["at"] = (timezone.now() - LONG_AGO).isoformat()
    round_.save()
    assert reconcile()["round_steps_resent"] == [round_.pk]
    assert queued(broker, "default") == [("annotation.tasks.round_open_batch", f"({round_.pk},)")]


# ---------------------------------------------------------------------------------------------
# PACS pulls and pretrainings
# ---------------------------------------------------------------------------------------------


def past_time_limit() -> timedelta:
    """Longer ago than a task of the default queue can still run."""
    return timedelta(seconds=django_settings.MASKLOOP_TIME_LIMITS["default"]) + LONG_AGO


@pytest.fixture
def pull(admin_user):
    return PacsPull.objects.create(
        requested_by=admin_user,
        server="dicomweb://pacs.example:8042/dicom-web",
        image_class=ImageClass.COVID,
        sent_at=timezone.now(),
    )


def dead_pull(pull: PacsPull, worker: str) -> PacsPull:
    """Makes the pull look taken by `worker` longer ago than the default queue's time limit."""
    PacsPull.objects.filter(pk=pull.pk).update(
        status=PacsPull.Status.RUNNING, worker=worker, started_at=timezone.now() - past_time_limit()
    )
    pull.refresh_from_db()
    return pull


def test_a_dead_pacs_pull_is_sent_again_then_failed_in_words_on_its_page(
    pull, broker, admin_user, api, django_capture_on_commit_callbacks
):
    assert pacs_pull_claim(pull_id=pull.pk, attempt=1, worker="host-a:11")
    PacsPull.objects.filter(pk=pull.pk).update(started_at=timezone.now() - LONG_AGO)
    assert reconcile()["pulls_resent"] == []  # 30 minutes in: still within its time limit

    dead_pull(pull, "host-a:11")
    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["pulls_resent"] == [pull.pk] and not summary["pulls_failed"]
    pull.refresh_from_db()
    assert (pull.attempts, pull.status, pull.worker) == (2, PacsPull.Status.QUEUED, "")
    assert queued(broker, "default") == [("annotation.tasks.pacs_pull", repr((pull.pk, 2)))]
    page = api(admin_user).get("/pacs/").content.decode()
    assert "attempt 2 of 3" in page
    assert reconcile()["pulls_resent"] == []  # the new attempt's message waits its turn

    # The superseded attempt, delivered again, neither runs nor fails the pull.
    assert pacs_pull_run(pull_id=pull.pk, attempt=1).status == PacsPull.Status.QUEUED
    assert not pacs_pull_fail(pull_id=pull.pk, reason="killed by a stale copy", attempt=1)
    assert pacs_pull_claim(pull_id=pull.pk, attempt=2, worker="host-b:22")
    assert not pacs_pull_claim(pull_id=pull.pk, attempt=2, worker="host-c:33")  # b is alive
    pull.refresh_from_db()
    assert (pull.status, pull.worker, pull.failure_reason) == (
        PacsPull.Status.RUNNING,
        "host-b:22",
        "",
    )

    dead_pull(pull, "host-b:22")
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["pulls_resent"] == [pull.pk]
    dead_pull(pull, "host-c:33")
    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["pulls_failed"] == [pull.pk] and not summary["pulls_resent"]
    pull.refresh_from_db()
    assert pull.status == PacsPull.Status.FAILED and pull.attempts == 3
    assert pull.failure_reason.startswith("the pull's worker stopped 3 times before the end")
    assert "on host host-c:33" in pull.failure_reason
    assert "start the same pull again to resume it" in pull.failure_reason
    page = api(admin_user).get("/pacs/").content.decode()
    assert "the pull&#x27;s worker stopped 3 times before the end" in page
    assert "attempt 3 of 3" in page
    assert reconcile()["pulls_failed"] == []  # failed stays failed


def test_a_queued_pull_whose_message_was_lost_is_sent_again_once_the_queue_is_idle(
    pull, broker, django_capture_on_commit_callbacks
):
    PacsPull.objects.filter(pk=pull.pk).update(sent_at=timezone.now() - LONG_AGO)
    publish("annotation.tasks.export_build", [999])  # the default queue still moves
    assert reconcile()["pulls_resent"] == []
    broker.flushdb()
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["pulls_resent"] == [pull.pk]
    assert queued(broker, "default") == [("annotation.tasks.pacs_pull", repr((pull.pk, 2)))]
    for _ in range(2):
        PacsPull.objects.filter(pk=pull.pk).update(sent_at=timezone.now() - LONG_AGO)
        broker.flushdb()
        with django_capture_on_commit_callbacks(execute=True):
            summary = reconcile()
    assert summary["pulls_failed"] == [pull.pk]
    pull.refresh_from_db()
    assert pull.failure_reason.startswith(
        "the pull was lost 3 times before a worker took it; last sent"
    )


@pytest.fixture
def pretraining(admin_user):
    return PretrainedEncoder.objects.create(
        encoder="densenet121",
        preset="tiny",
        image_ids=[1],
        inputs={"images": {"1": "images/missing.png"}},
        started_by=admin_user,
    )


def silent_pretraining(row: PretrainedEncoder, **fields) -> PretrainedEncoder:
    """Makes a pretraining look as if nothing was heard of it for half an hour."""
    ago = timezone.now() - LONG_AGO
    PretrainedEncoder.objects.filter(pk=row.pk).update(heartbeat_at=ago, created_at=ago, **fields)
    row.refresh_from_db()
    return row


P = PretrainedEncoder.Status


def test_a_dead_pretraining_is_sent_again_then_failed_in_words(
    pretraining, broker, django_capture_on_commit_callbacks
):
    row = silent_pretraining(pretraining, status=P.TRAINING, worker="host-a:11")
    PretrainedEncoder.objects.filter(pk=row.pk).update(heartbeat_at=timezone.now())
    assert reconcile()["pretrainings_resent"] == []  # heard from just now
    silent_pretraining(row)

    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["pretrainings_resent"] == [row.pk] and not summary["pretrainings_failed"]
    row.refresh_from_db()
    assert (row.attempts, row.worker, row.status) == (2, "", P.TRAINING)
    assert timezone.now() - row.heartbeat_at < timedelta(seconds=30)
    assert queued(broker, "training") == [("training.tasks.pretrain", repr((row.pk, 2)))]
    assert reconcile()["pretrainings_resent"] == []  # the new attempt has its stale period

    # The superseded attempt, delivered again, neither trains nor fails the row.
    assert "does nothing" in pretrain_execute(pretrain_id=row.pk, attempt=1)
    assert not pretrain_fail(pretrain_id=row.pk, reason="killed by a stale copy", attempt=1)
    row.refresh_from_db()
    assert (row.status, row.worker, row.failure_reason) == (P.TRAINING, "", "")

    silent_pretraining(row, worker="host-b:22")
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["pretrainings_resent"] == [row.pk]
    silent_pretraining(row, worker="host-c:33")
    with django_capture_on_commit_callbacks(execute=True):
        summary = reconcile()
    assert summary["pretrainings_failed"] == [row.pk] and not summary["pretrainings_resent"]
    row.refresh_from_db()
    assert row.status == P.FAILED and row.attempts == 3
    assert "the pretraining worker stopped answering 3 times" in row.failure_reason
    assert "on host host-c:33" in row.failure_reason
    assert "does nothing" in pretrain_execute(pretrain_id=row.pk, attempt=3)  # failed stays


def test_a_never_claimed_pretraining_waits_its_turn_until_the_training_queue_is_idle(
    pretraining, broker, django_capture_on_commit_callbacks
):
    row = silent_pretraining(pretraining)  # queued half an hour ago, no worker took it
    publish("training.tasks.pretrain", [999, 1])
    assert reconcile()["pretrainings_resent"] == []
    broker.flushdb()
    with django_capture_on_commit_callbacks(execute=True):
        assert reconcile()["pretrainings_resent"] == [row.pk]
    row.refresh_from_db()
    assert (row.attempts, row.status) == (2, P.QUEUED)
    assert queued(broker, "training") == [("training.tasks.pretrain", repr((row.pk, 2)))]
