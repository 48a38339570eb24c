#!/bin/sh
# Runs IB's gateway and chromedriver side by side; either exiting ends the container (and
# Kubernetes restarts it), so a half-working sidecar never lingers.
set -eu
CONF="${GATEWAY_CONF:-root/conf.yaml}"
# chromedriver listens on loopback only (its default without --allowed-ips): the daemon
# container of the same pod reaches it at http://127.0.0.1:9515.
chromedriver --port="${CHROMEDRIVER_PORT:-9515}" &
driver=$!
bin/run.sh "$CONF" &
gateway=$!
trap 'kill "$driver" "$gateway" 2>/dev/null || true' TERM INT
# Wait for the first of the two to exit, then stop the other.
while kill -0 "$driver" 2>/dev/null && kill -0 "$gateway" 2>/dev/null; do
  sleep 2
done
kill "$driver" "$gateway" 2>/dev/null || true
wait || true
exit 1
