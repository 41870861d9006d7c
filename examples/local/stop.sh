#!/usr/bin/env bash
# Stops the local cluster started by start.sh (SIGTERM: an active hands over
# to a caught-up passive before it stops).
here="$(cd "$(dirname "$0")" && pwd)"
for m in node1 node2 witness; do
  if [ -f "$here/data/$m.pid" ]; then
    kill "$(cat "$here/data/$m.pid")" 2>/dev/null || true
    rm -f "$here/data/$m.pid"
  fi
done
