#!/usr/bin/env bash
# The engine's memory while it delivers large messages: COUNT messages of
# SIZE_MB each are accepted with delivery off (20 clients at once), then
# delivery is turned on and they go to a loopback sink all at once
# (delivery-concurrency 100). Prints the engine's peak RSS (VmHWM) after
# acceptance and after delivery. No root, no Postfix.
#
#   bash benches/delivery-memory.sh
#   BIN=/path/to/relaygate bash benches/delivery-memory.sh   (an A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-20}
SIZE_MB=${SIZE_MB:-20}
PORT=${PORT:-2620}
SINK=${SINK:-2621}
cargo build --release --quiet --bin relaygate --bench smtp_load
BIN=${BIN:-target/release/relaygate}
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
. benches/bench-setup.sh
work=$(mktemp -d /var/tmp/relaygate-delmem.XXXXXX)
PID= SINKPID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null && wait "$SINKPID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
rg_relay_setup "$RG" "$PORT" "$SINK"
$RG policy set delivery off >/dev/null
$RG policy set delivery-concurrency 100 >/dev/null
$RG policy set destination-concurrency 100 >/dev/null
"$LOADGEN" --sink "$SINK" --messages "$COUNT" > "$work/sink.out" 2>&1 &
SINKPID=$!
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
python3 - "$PORT" "$COUNT" "$SIZE_MB" <<'PY'
import smtplib, sys, threading
port, count, size = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
line = b"x" * 998 + b"\r\n"
body = b"Subject: big\r\n\r\n" + line * (size * 1024 * 1024 // 1000)
def send(i):
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.sendmail("load@example.com", [f"big{i}@far.test"], body)
threads = [threading.Thread(target=send, args=(i,)) for i in range(count)]
[t.start() for t in threads]
[t.join() for t in threads]
PY
accepted=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$PID/status)
$RG policy set delivery on >/dev/null
wait "$SINKPID"; SINKPID=
delivered=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$PID/status)
echo "delivery-memory: $COUNT messages of $SIZE_MB MB; engine peak RSS after acceptance ${accepted} MB, after delivery ${delivered} MB"
