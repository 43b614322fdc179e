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

# One worker for all three queues; each task runs in a fresh child process so TensorFlow
# hands its memory back after every training.
if [ -f var/worker.pid ] && kill -0 "$(cat var/worker.pid)" 2>/dev/null; then
  kill "$(cat var/worker.pid)" 2>/dev/null || true
  sleep 2
fi
.venv/bin/celery -A config worker -Q training,inference,default --concurrency 1 \
  --max-tasks-per-child 1 --prefetch-multiplier 1 -l info --logfile var/worker.log \
  --pidfile var/worker.pid --detach
trap 'kill "$(cat var/worker.pid 2>/dev/null)" 2>/dev/null || true' EXIT INT TERM

cat <<MSG

  maskloop is running at  http://$HOST:$PORT/
  Celery worker log:      var/worker.log
  Sign in as md1 / md1-demo-pass (MD), admin / admin-demo-pass (admin), data / data-demo-pass.
  Start with Stage I on the Rounds page as admin. Ctrl+C stops the server and the worker.

MSG
$PY manage.py runserver "$HOST:$PORT" --noreload
