#!/usr/bin/env bash
# Start a local Berth cluster of 3 or 5 replicas on 127.0.0.1 (peer ports 7401, 7402, ...).
# Data, logs and pid files go under $BERTH_DATA (default ./berth-data). Re-running it with the
# same data directory restarts the same cluster with its state.
#   usage: cluster/local/start.sh [3|5]
set -euo pipefail
n=${1:-3}
case "$n" in 3|5) ;; *) echo "usage: $0 [3|5]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${BERTH_BIN:-$root/target/release/berth}
data=${BERTH_DATA:-$PWD/berth-data}
base_port=${BERTH_BASE_PORT:-7401}

if [ ! -x "$bin" ]; then
  echo "building $bin ..."
  (cd "$root" && cargo build --release --quiet)
fi
mkdir -p "$data"

members=""
for i in $(seq 1 "$n"); do
  members="${members:+$members,}$i=127.0.0.1:$((base_port + i - 1))"
done

declare -A offset
for i in $(seq 1 "$n"); do
  offset[$i]=$(stat -c %s "$data/replica-$i.log" 2>/dev/null || echo 0)
  pidfile="$data/replica-$i.pid"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "replica $i is already running (pid $(cat "$pidfile"))"
    continue
  fi
  args=(server --id "$i" --peer-listen "127.0.0.1:$((base_port + i - 1))" --data-dir "$data/replica-$i")
  if [ "$i" = 1 ]; then
    args+=(--bootstrap --initial-members "$members")
  fi
  nohup "$bin" "${args[@]}" >>"$data/replica-$i.log" 2>&1 &
  echo $! >"$pidfile"
  echo "replica $i: pid $!, peer 127.0.0.1:$((base_port + i - 1)), log $data/replica-$i.log"
done

printf 'waiting for a leader'
for _ in $(seq 1 150); do
  for i in $(seq 1 "$n"); do
    # Only what this start wrote: earlier runs append to the same log.
    if tail -c +"$((offset[$i] + 1))" "$data/replica-$i.log" 2>/dev/null | grep -q 'role=Leader'; then
      leader=$i
    fi
  done
  if [ -n "${leader:-}" ]; then
    echo; echo "cluster of $n replicas is up (members: $members)"; exit 0
  fi
  printf '.'; sleep 0.2
done
echo; echo "no leader after 30 s; see $data/replica-*.log" >&2
exit 1
