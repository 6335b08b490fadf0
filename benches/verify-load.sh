#!/usr/bin/env bash
# Recipient verification under load: N RCPTs, one at a time in each of
# CONC sessions, of local addresses relaygate has never seen, so that
# every one is a question to the route (the load generator as a sink,
# which refuses local parts starting with "perm"). Prints RCPTs/s,
# relaygate's CPU per RCPT and its peak resident memory, for:
#   off         verify-recipients off (the policy alone)
#   new known   on, every address new: one question each
#   remembered  on, the same addresses again: answered from memory
#   new unknown on, every address new and refused by the route (550 5.1.1)
# No root, no Postfix.
#
#   bash benches/verify-load.sh            (N=50000 CONC=20)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-50000}
CONC=${CONC:-20}
PORT=${PORT:-2630}
SINK=${SINK:-2631}
cargo build --release --quiet --bin relaygate --bench smtp_load
BIN=${BIN:-target/release/relaygate}
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /var/tmp/relaygate-verify.XXXXXX)
PID=
SINKPID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null && wait "$SINKPID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:$PORT >/dev/null
$RG domain add example.com >/dev/null
$RG route add example.com 127.0.0.1:$SINK --tls none >/dev/null
$RG policy set max-bad-commands 10000 >/dev/null
$RG policy set max-sessions-per-ip 10000 >/dev/null
"$LOADGEN" --sink "$SINK" --messages 1 > "$work/sink.log" &
SINKPID=$!
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
HZ=$(getconf CLK_TCK)
ticks() { sed 's/^.*) //' /proc/$PID/stat | awk '{print $12 + $13}'; }
round() {
  local what=$1 prefix=$2 t0 t1 out
  t0=$(ticks)
  out=$("$LOADGEN" --target 127.0.0.1:$PORT --recipients "$N" --local-part "$prefix" --concurrency "$CONC" 2>&1)
  sleep 0.5
  t1=$(ticks)
  python3 - "$what" "$out" "$N" "$HZ" "$t0" "$t1" "$(grep VmHWM /proc/$PID/status | awk '{print $2}')" <<'PY'
import re, sys
what, out, n, hz, t0, t1, hwm = sys.argv[1:]
n, hz = int(n), int(hz)
f = lambda k: re.search(k + r"=([0-9.]+)", out).group(1)
cpu = (int(t1) - int(t0)) / hz * 1e6 / n
print(f"{what:12} {float(f('rcpts_per_sec')):7.0f} RCPTs/s  accepted {f('accepted'):>6}  put off {f('put_off'):>6}  refused {f('refused'):>6}  relaygate CPU {cpu:5.1f} us/RCPT  peak RSS {int(hwm) // 1024} MB")
PY
}
round "off" user
$RG policy set verify-recipients on >/dev/null
sleep 1
round "new known" user
round "remembered" user
round "new unknown" perm
