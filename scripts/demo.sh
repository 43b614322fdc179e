#!/usr/bin/env bash
# Runs maskloop on its embedded default: SQLite and kombu's filesystem broker under ./var,
# a separate Celery worker process, and the web server. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=${1:-127.0.0.1}
PORT=${2:-8000}
PY=.venv/bin/python
export DJANGO_DEBUG=1
unset DATABASE_URL CELERY_BROKER_URL
mkdir -p var

$PY manage.py migrate --no-input -v0
$PY manage.py seed_demo

# Two workers, as in production: `training` runs each task in a fresh child process so
# TensorFlow hands its memory back after every training; `inference,default` stays warm.
# `celery beat` has the reconciler send again what a stopped worker left behind.
stop_workers() {
  for name in training default beat; do
    if [ -f "var/worker-$name.pid" ]; then
      kill "$(cat "var/worker-$name.pid")" 2>/dev/null || true
      rm -f "var/worker-$name.pid"
    fi
  done
}
stop_workers
sleep 1
.venv/bin/celery -A config worker -Q training -n "training@%h" --concurrency 1 \
  --max-tasks-per-child 1 --prefetch-multiplier 1 -l info --logfile var/worker-training.log \
  --pidfile var/worker-training.pid --detach
.venv/bin/celery -A config worker -Q inference,default -n "default@%h" --concurrency 1 \
  --prefetch-multiplier 1 -l info --logfile var/worker-default.log \
  --pidfile var/worker-default.pid --detach
.venv/bin/celery -A config beat -s var/celerybeat-schedule -l info --logfile var/worker-beat.log \
  --pidfile var/worker-beat.pid --detach
trap stop_workers EXIT INT TERM

cat <<MSG

  maskloop is running at  http://$HOST:$PORT/
  Celery worker logs:     var/worker-training.log, var/worker-default.log, var/worker-beat.log
  Sign in as md1 / md1-demo-pass (MD; md3 drew the seeded masks), admin / admin-demo-pass (admin), data / data-demo-pass.
  Start with Stage I on the Rounds page as admin. Ctrl+C stops the server, the workers and beat.

MSG
$PY manage.py runserver "$HOST:$PORT" --noreload
