#!/usr/bin/env bash
# Acceptance while the queue grows, and the drain when the next hop is back.
#
#   bash benches/queue-growth.sh          (about 2 minutes after the build)
#
# The engine relays everything to a smarthost route on 127.0.0.1:$SINK_PORT.
# First nothing listens there (the next hop is down): BATCHES batches of
# BATCH messages are accepted while each one is deferred, and the accepted
# msg/s of each batch shows whether a growing queue slows acceptance. Then a
# sink (benches/smtp_load.rs --sink) listens on that port, `queue retry all`
# makes the backlog due, and the time until the sink has every message gives
# the drain rate.
#
# The load is Postfix's smtp-source without -d (a new connection per
# message, as clients send; Debian's postfix package) when it is installed,
# else benches/smtp_load.rs (sessions reused); LOAD=smtp_load forces that.
set -euo pipefail
PORT=${PORT:-2720}
SINK_PORT=${SINK_PORT:-2721}
BATCH=${BATCH:-5000}
BATCHES=${BATCHES:-4}
SESSIONS=${SESSIONS:-50}
LOAD=${LOAD:-$(command -v smtp-source >/dev/null && echo smtp-source || echo smtp_load)}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin relaygate --bench smtp_load
BIN=${RG_BIN:-target/release/relaygate}
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
work=$(mktemp -d /var/tmp/relaygate-queue-bench.XXXXXX)
RG_PID= SINK_PID=
cleanup() {
  set +e
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
  [ -n "$RG_PID" ] && kill -TERM "$RG_PID" 2>/dev/null && wait "$RG_PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
rg="$BIN --db $work/relaygate.db"
$rg bind remove 127.0.0.1:2525 >/dev/null
$rg bind add "127.0.0.1:$PORT" >/dev/null
$rg domain add example.com >/dev/null
$rg policy set max-sessions-per-ip 20000 >/dev/null
$rg route add '*' "127.0.0.1:$SINK_PORT" --tls none >/dev/null
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
RG_PID=$!
for _ in $(seq 100); do grep -q "listening on 127.0.0.1:$PORT" "$work/log" && break; sleep 0.1; done
echo "relaygate $(git describe --always --dirty 2>/dev/null) · $(nproc) CPUs · next hop 127.0.0.1:$SINK_PORT down · load: $LOAD, $SESSIONS sessions"
for b in $(seq "$BATCHES"); do
  if [ "$LOAD" = smtp-source ]; then
    s0=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$BATCH" -l 2048 -f load@example.com -t sink@far.test "127.0.0.1:$PORT"
    s1=$(date +%s.%N)
    rate=$(awk -v n="$BATCH" -v a="$s0" -v b="$s1" 'BEGIN { printf "%.0f", n / (b - a) }')
  else
    out=$("$LOADGEN" --target "127.0.0.1:$PORT" --messages "$BATCH" --concurrency "$SESSIONS")
    rate=$(sed -n 's/.*msgs_per_sec=\([0-9]*\).*/\1/p' <<< "$out")
  fi
  echo "batch $b: queue before $(( (b - 1) * BATCH )) -> $rate accepted msg/s"
done
sleep 2
total=$(( BATCH * BATCHES ))
"$LOADGEN" --sink "$SINK_PORT" --messages "$total" > "$work/sink.out" &
SINK_PID=$!
sleep 0.5
s0=$(date +%s.%N)
$rg queue retry all >/dev/null
wait "$SINK_PID" || true
SINK_PID=
s1=$(date +%s.%N)
cat "$work/sink.out" | tail -1
awk -v n="$total" -v a="$s0" -v b="$s1" 'BEGIN { printf "drain: %d messages in %.1f s = %.0f msg/s (from queue retry all until the sink had them all)\n", n, b - a, n / (b - a) }'
