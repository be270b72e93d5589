#!/usr/bin/env bash
# Stop the replicas started by cluster/local/start.sh (SIGTERM, then wait for a clean exit).
#   usage: cluster/local/stop.sh
set -euo pipefail
data=${BERTH_DATA:-$PWD/berth-data}
shopt -s nullglob
pidfiles=("$data"/replica-*.pid)
[ ${#pidfiles[@]} -gt 0 ] || { echo "no replicas recorded in $data"; exit 0; }
for pidfile in "${pidfiles[@]}"; do
  pid=$(cat "$pidfile")
  name=$(basename "$pidfile" .pid)
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name (pid $pid) did not stop within 10 s; sending SIGKILL" >&2
      kill -KILL "$pid" || true
    else
      echo "$name stopped"
    fi
  fi
  rm -f "$pidfile"
done
