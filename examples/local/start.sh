#!/usr/bin/env bash
# Starts the local three-member cluster (node1, node2, witness) on
# 127.0.0.1 and waits until an active exists. Logs and data go under
# examples/local/data/, with the certificates for mutual TLS (made on the
# first start by `aoc-node certs`). Stop it with examples/local/stop.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"
cargo build --release -q -p aoc-node -p aoc-witness
bin="$root/target/release"
mkdir -p "$here/data"
certs="$here/data/certs"
if [ ! -f "$certs/ca.pem" ]; then
  "$bin/aoc-node" certs --cluster-id 1 --members 1,2,3 --clients admin --out "$certs" >/dev/null
fi
tls=(--tls-ca "$certs/ca.pem" --tls-cert "$certs/client-admin.pem" --tls-key "$certs/client-admin.key" --cluster-id 1)
"$bin/aoc-node" run --config "$here/node1.toml" >"$here/data/node1.log" 2>&1 &
echo $! >"$here/data/node1.pid"
"$bin/aoc-node" run --config "$here/node2.toml" >"$here/data/node2.log" 2>&1 &
echo $! >"$here/data/node2.pid"
"$bin/aoc-witness" run --config "$here/witness.toml" >"$here/data/witness.log" 2>&1 &
echo $! >"$here/data/witness.pid"
endpoints=127.0.0.1:7201,127.0.0.1:7202
for _ in $(seq 1 100); do
  if "$bin/aoc-node" status --endpoints "$endpoints" --json "${tls[@]}" 2>/dev/null | grep -q '"role":"active"'; then
    "$bin/aoc-node" status --endpoints "$endpoints" "${tls[@]}"
    exit 0
  fi
  sleep 0.2
done
echo "start.sh: no active after 20 s; see $here/data/*.log" >&2
exit 1
