#!/usr/bin/env bash
# Make sure a PostgreSQL server answers where DATABASE_URL points (default: localhost:5432).
# With no DATABASE_URL and no local server, install Debian's PostgreSQL and start it.
set -euo pipefail
if [[ -n "${DATABASE_URL:-}" ]]; then
    exit 0  # the operator chose a server; the services report clearly if it is down
fi
ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if command -v pg_isready >/dev/null && ready; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
if ! command -v pg_ctlcluster >/dev/null; then
    echo "installing PostgreSQL from Debian packages"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib
fi
version=$(ls /etc/postgresql | sort -V | tail -n1)
$SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
for _ in $(seq 1 60); do ready && break; sleep 0.5; done
ready || { echo "PostgreSQL did not start on 127.0.0.1:5432" >&2; exit 1; }
# Trust local TCP connections for the development user, as the embedded default expects.
if ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
    echo "PostgreSQL is running but user 'postgres' cannot log in over TCP without a password;" >&2
    echo "set DATABASE_URL=postgresql://USER:PASSWORD@HOST:5432/dicomflow" >&2
    exit 1
fi
