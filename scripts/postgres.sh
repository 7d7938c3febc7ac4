#!/usr/bin/env bash
# A throw-away PostgreSQL server on the loopback address, for the tests of shared searches.
#   bash scripts/postgres.sh start DIR   # prints the database URL (export it as LQF_TEST_POSTGRES)
#   bash scripts/postgres.sh stop DIR
# Installs Debian's postgresql package when it is missing (needs root or sudo for apt).
set -euo pipefail
action=${1:?usage: postgres.sh start|stop DIR}
dir=${2:?usage: postgres.sh start|stop DIR}

find_bin() { ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1; }
as_owner=()
if [ "$(id -u)" = 0 ]; then as_owner=(runuser -u postgres --); fi

if [ "$action" = stop ]; then
  bin=$(find_bin)
  [ -n "$bin" ] && [ -d "$dir/data" ] && "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop > /dev/null
  rm -rf "$dir"
  exit 0
fi

bin=$(find_bin)
if [ -z "$bin" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -qq postgresql > /dev/null 2>&1 || (apt-get update -qq > /dev/null && apt-get install -y -qq postgresql > /dev/null)
  elif command -v sudo > /dev/null; then
    sudo apt-get install -y -qq postgresql > /dev/null
  fi
  bin=$(find_bin)
fi
if [ -z "$bin" ]; then
  echo "postgres.sh: PostgreSQL is not installed and could not be (apt-get install postgresql)" >&2
  exit 1
fi
mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${as_owner[@]}" "$bin/initdb" -D "$dir/data" -A trust -U lqf > /dev/null
"${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -o "-h 127.0.0.1 -p $port -k $dir" -l "$dir/server.log" -w start > /dev/null
echo "postgresql://lqf@127.0.0.1:$port/postgres"
