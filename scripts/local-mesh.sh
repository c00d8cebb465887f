#!/usr/bin/env bash
# Starts a local mesh for load tests: one nats-server with JetStream and
# EDGES edge processes sharing one port (SO_REUSEPORT), because one process
# here may hold at most ~19,900 sockets. Stops everything on Ctrl-C.
#
#   scripts/local-mesh.sh            # 6 edges on 127.0.0.1:8080, NATS on 127.0.0.1:4222
#   EDGES=8 LISTEN=127.0.0.1:9090 scripts/local-mesh.sh -- --ping-interval 25s
#
# Extra arguments after -- go to every edge.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGES=${EDGES:-6}
LISTEN=${LISTEN:-127.0.0.1:8080}
NATS_ADDR=${NATS_ADDR:-127.0.0.1:4222}
DATA=${DATA:-$(mktemp -d /tmp/parley-mesh.XXXXXX)}
MAXCONN=${MAXCONN:-19000}
[[ "${1:-}" == "--" ]] && shift

if [[ -z "${NOBUILD:-}" ]]; then # NOBUILD=1: use the binaries already in bin/
  mkdir -p bin
  go build -o bin/ ./cmd/edge ./cmd/loadgen
  go build -o bin/nats-server github.com/nats-io/nats-server/v2
fi

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; echo "mesh stopped (data in $DATA)"' EXIT INT TERM
bin/nats-server -js -sd "$DATA/nats" -a "${NATS_ADDR%:*}" -p "${NATS_ADDR##*:}" -m 0 >"$DATA/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/${NATS_ADDR%:*}/${NATS_ADDR##*:}") 2>/dev/null && break; sleep 0.1; done
for i in $(seq "$EDGES"); do
  bin/edge --nats "nats://$NATS_ADDR" --insecure --reuse-port --listen "$LISTEN" \
    --max-connections "$MAXCONN" --log-level warn "$@" >"$DATA/edge$i.log" 2>&1 &
  pids+=($!)
done
echo "mesh: nats-server on $NATS_ADDR, $EDGES edges on ws://$LISTEN/ws (logs in $DATA)"
wait
