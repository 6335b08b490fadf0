#!/usr/bin/env bash
# An attack on the spool's commit delay: HELD clients, each from its own
# 127.0.x.y address, open a transaction (MAIL, RCPT) and never finish it
# (HELD=0 for the same run without them). Meanwhile one
# honest client sends 2,000 messages one after another (smtp-source -d
# -s 1) through the engine to a sink. Prints its msg/s before and during
# the attack, and the engine's memory (VmRSS, VmHWM). With five or more
# transactions under way the spool gathers for 400 us before a commit, so
# the honest client pays at most that per message. (Clients that never
# read, trickled bytes and huge bodies: tests/hardening.rs.)
#
#   bash benches/held-transactions.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HELD=${HELD:-400}
PORT=${PORT:-2730}
SINK_PORT=${SINK_PORT:-2731}
command -v smtp-source >/dev/null || { echo "needs smtp-source (Debian's postfix package)"; exit 2; }
. benches/bench-setup.sh
work=$(mktemp -d /var/tmp/relaygate-held.XXXXXX)
PID= SINK= ATTACK=
cleanup() {
  for p in $ATTACK $SINK; do kill "$p" 2>/dev/null || true; done
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
BIN=${RG_BIN:-target/release/relaygate}
RG="$BIN --db $work/relaygate.db"
rg_relay_setup "$RG" $PORT $SINK_PORT
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
"$LOADGEN" --sink $SINK_PORT --messages 4000 > "$work/sink.out" 2>&1 &
SINK=$!
honest() {
  local s e
  s=$(date +%s.%N)
  smtp-source -d -s 1 -m 2000 -l 2048 -f a@example.com -t x@far.test 127.0.0.1:$PORT
  e=$(date +%s.%N)
  python3 -c "import sys; print(f'{sys.argv[1]}: {2000 / (float(sys.argv[3]) - float(sys.argv[2])):.0f} msg/s')" "$1" "$s" "$e"
}
honest "one client, no attack"
python3 - "$PORT" "$HELD" > "$work/attack.out" 2>&1 <<'PY' &
import socket, sys, time
port, held = int(sys.argv[1]), int(sys.argv[2])
socks = []
for i in range(held):
    s = socket.socket()
    s.bind((f"127.0.{1 + i // 200}.{1 + i % 200}", 0))
    s.connect(("127.0.0.1", port))
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO held.test\r\n")
    while f.readline()[3:4] != b" ":
        pass
    s.sendall(b"MAIL FROM:<a@example.com>\r\n"); f.readline()
    s.sendall(b"RCPT TO:<b@example.com>\r\n"); f.readline()
    socks.append(s)
print("ready", flush=True)
time.sleep(600)
PY
ATTACK=$!
for _ in $(seq 120); do grep -q ready "$work/attack.out" 2>/dev/null && break; sleep 0.5; done
grep -q ready "$work/attack.out" || { echo "the attack did not get its sessions: $(cat "$work/attack.out")"; exit 1; }
echo "attack: $HELD transactions held open; engine $(awk '/VmRSS/{print $2}' /proc/$PID/status) KiB"
honest "one client, during the attack"
echo "engine VmRSS $(awk '/VmRSS/{print $2}' /proc/$PID/status) KiB, VmHWM $(awk '/VmHWM/{print $2}' /proc/$PID/status) KiB"
