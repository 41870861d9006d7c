#!/usr/bin/env bash
# Stops the local cluster started by start.sh (SIGTERM: an active hands over
# to a caught-up passive before it stops) and waits until every member has
# exited (up to 15 s each), so that start.sh can be run again at once.
here="$(cd "$(dirname "$0")" && pwd)"
pids=()
for m in node1 node2 witness; do
  if [ -f "$here/data/$m.pid" ]; then
    pid="$(cat "$here/data/$m.pid")"
    kill "$pid" 2>/dev/null && pids+=("$m:$pid")
    rm -f "$here/data/$m.pid"
  fi
done
for entry in "${pids[@]}"; do
  m="${entry%%:*}"
  pid="${entry##*:}"
  for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || continue 2
    sleep 0.1
  done
  echo "stop.sh: $m (process $pid) still runs after 15 s; see $here/data/$m.log" >&2
done
