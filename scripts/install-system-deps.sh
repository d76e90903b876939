#!/usr/bin/env bash
# Installs the real components the test suite starts, when run as root on Debian (and npm).
# Without root it only reports what is missing; the tests skip those parts (and fail under CI=true).
set -euo pipefail
missing=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v curl >/dev/null || missing+=(curl)
command -v ip >/dev/null || missing+=(iproute2)
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || missing+=(postgresql)
command -v runuser >/dev/null || missing+=(util-linux)
# A one-host Slurm cluster (tests/slurm): controller, compute daemon, client commands, munge.
{ [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && command -v sbatch >/dev/null; } ||
  missing+=(slurm-wlm)
[ -x /usr/sbin/munged ] || command -v munged >/dev/null || missing+=(munge)
# PouchDB Server (npm): the CouchDB-compatible server the CouchDB tests replicate dirt into.
POUCHDB_SERVER=pouchdb-server@4.2.0
command -v pouchdb-server >/dev/null || { command -v npm >/dev/null || missing+=(npm); }
if [ ${#missing[@]} != 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not root (or no apt-get): not installing ${missing[*]}; tests that need them will skip" >&2
    exit 0
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v pouchdb-server >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "not root: not installing $POUCHDB_SERVER (npm install -g); its tests will skip" >&2
    exit 0
  fi
  echo "installing $POUCHDB_SERVER (npm; in-memory mode needs none of its native modules)"
  npm install -g --no-audit --no-fund --loglevel=error "$POUCHDB_SERVER" >/dev/null
fi
