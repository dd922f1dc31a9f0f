#!/usr/bin/env bash
# The PostgreSQL server the registry/log tests run against (they start their own
# cluster on 127.0.0.1 in a temp folder with initdb/pg_ctl). Idempotent; needs root.
set -euo pipefail
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && exit 0
if [[ $(id -u) != 0 ]]; then
  echo "need root to install postgresql (apt-get install postgresql)" >&2
  exit 1
fi
echo "installing postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
