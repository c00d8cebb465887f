#!/usr/bin/env bash
# Acked JetStream publishes/s on a 3-node R3 cluster on this machine, with
# the default lazy fsync and with `sync_interval: always`, alternating the
# two modes ROUNDS times (default 3) so a noisy machine hits both alike.
# Prints one line per run; docs/guarantees.md quotes the medians.
#
#   scripts/sync-interval-bench.sh            # 3 rounds, 10 s each
#   ROUNDS=5 DURATION=20s WINDOW=256 scripts/sync-interval-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} duration=${DURATION:-10s} window=${WINDOW:-256}
work=$(mktemp -d /tmp/parley-sync.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
go build -o "$work/nats-server" github.com/nats-io/nats-server/v2
go build -o "$work/edge" ./cmd/edge
go build -o "$work/loadgen" ./cmd/loadgen
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

run_mode() { # $1: lazy|always
  local mode=$1 c=() r=() routes="" urls=""
  pids=()
  for i in 0 1 2; do c[$i]=$(free_port); r[$i]=$(free_port); done
  for i in 0 1 2; do routes+="nats-route://127.0.0.1:${r[$i]},"; urls+="nats://127.0.0.1:${c[$i]},"; done
  for i in 0 1 2; do
    local sync=""
    [ "$mode" = always ] && sync="sync_interval: always"
    cat > "$work/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:${c[$i]}
jetstream { store_dir: "$work/$mode-n$i", $sync }
cluster { name: parley-sync, listen: 127.0.0.1:${r[$i]}, routes: [${routes%,}] }
CONF
    "$work/nats-server" -c "$work/n$i.conf" >"$work/n$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do
    "$work/edge" provision --nats "${urls%,}" --stream-replicas 3 --log-level error >/dev/null 2>&1 && break
    sleep 0.3
  done
  local out
  out=$("$work/loadgen" --scenario nats-publish --nats "${urls%,}" --conns 1 --window "$window" \
    --rooms 100 --payload 64 --duration "$duration" --procs nats-server 2>&1 | grep -E '^publishes' || true)
  echo "$mode: $out"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"/lazy-n* "$work"/always-n*
}

for round in $(seq 1 "$rounds"); do
  run_mode lazy
  run_mode always
done
