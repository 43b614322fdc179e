#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis, Chromium, dicom3tools and Orthanc are available for the test suite:
# starts what is installed, installs what is missing with apt-get where it can, otherwise says
# what to do.
set -euo pipefail

say() { printf 'ensure-services: %s\n' "$*"; }
die() { printf 'ensure-services: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "$1 is missing and apt-get is not available; install $1 yourself"
  [ "$(id -u)" = 0 ] || die "$1 is missing; install it (sudo apt-get install -y $*) or run as root"
  if [ $APT_UPDATED = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql postgresql-client; fi
  say "starting PostgreSQL"
  for v in $(ls /etc/postgresql); do pg_ctlcluster --skip-systemctl-redirect "$v" main start || true; done
  for _ in $(seq 30); do pg_up && break; sleep 1; done
  pg_up || die "PostgreSQL did not come up on 127.0.0.1:5432"
fi
# The suite connects as postgres without a password (trust on loopback).
if ! psql -h 127.0.0.1 -U postgres -c 'select 1' -qAt >/dev/null 2>&1; then
  die "cannot connect to PostgreSQL as user postgres on 127.0.0.1 without a password; allow trust on loopback or set TEST_DB_URL"
fi

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 20); do redis_up && break; sleep 0.5; done
  redis_up || die "Redis did not come up on 127.0.0.1:6379"
fi

if [ ! -x /usr/bin/chromium ]; then apt_install chromium; fi
# dicom3tools' dciodvfy validates the DICOM-SEG export (tests/annotation/test_export_dicom_seg.py).
command -v dciodvfy >/dev/null || apt_install dicom3tools
# Orthanc and its DICOMweb plugin: the PACS that tests/orthanc.py starts for the DICOMweb pull
# tests (on a loopback port of its own, never the system service).
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]; then
  apt_install orthanc orthanc-dicomweb
fi
say "PostgreSQL, Redis, Chromium, dciodvfy and Orthanc (DICOMweb) are ready"
