#!/usr/bin/env bash
# What one denied session costs relaygate: ROUNDS rounds of DENIED sessions
# (10 at a time, each a new connection refused at RCPT, by smtp_load
# --denied) against one engine, printing sessions/s, the process's own CPU
# per session (user, system, total, from /proc) and the event-log writer
# thread's share. No root, no Postfix. Then the same load once against
# the least a server can do (`smtp_load --refuser`: tokio, one write per
# reply, no policy, no log): the kernel's and the runtime's share of a
# refused session on this machine, which no server goes below.
#
#   bash benches/denied-cost.sh                 (the binary built here)
#   BIN=/path/to/relaygate bash benches/denied-cost.sh
#
# Interleave two binaries for an A/B on this noisy VM:
#   for i in 1 2 3; do for b in old new; do BIN=/tmp/$b bash benches/denied-cost.sh; done; done
set -euo pipefail
cd "$(dirname "$0")/.."
DENIED=${DENIED:-20000}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-2610}
cargo build --release --quiet --bin relaygate --bench smtp_load
BIN=${BIN:-target/release/relaygate}
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /var/tmp/relaygate-denied.XXXXXX)
PID= FLOOR=
cleanup() {
  [ -n "$FLOOR" ] && kill "$FLOOR" 2>/dev/null && wait "$FLOOR" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:$PORT >/dev/null
$RG policy set max-sessions 20000 >/dev/null
$RG policy set max-sessions-per-ip 20000 >/dev/null
$RG list remove allow 127.0.0.0/8 >/dev/null
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
HZ=$(getconf CLK_TCK)
tid=$(grep -l decision-log /proc/$PID/task/*/comm | cut -d/ -f5)
ticks() { sed 's/^.*) //' "$1" | awk '{print $12, $13}'; }
# Waits until the engine is idle (its CPU still for 0.3 s): the event log
# writes its last batch after the load is over, and that is the load's too.
settle() {
  local a b
  for _ in $(seq 30); do
    a=$(ticks /proc/$PID/stat); sleep 0.3; b=$(ticks /proc/$PID/stat)
    [ "$a" = "$b" ] && return
  done
}
for _ in $(seq "$ROUNDS"); do
  read -r u0 s0 < <(ticks /proc/$PID/stat)
  read -r lu0 ls0 < <(ticks /proc/$PID/task/$tid/stat)
  out=$("$LOADGEN" --target 127.0.0.1:$PORT --denied "$DENIED" --concurrency 10 2>&1)
  settle
  read -r u1 s1 < <(ticks /proc/$PID/stat)
  read -r lu1 ls1 < <(ticks /proc/$PID/task/$tid/stat)
  python3 - "$out" "$DENIED" "$HZ" "$u0" "$s0" "$u1" "$s1" "$lu0" "$ls0" "$lu1" "$ls1" <<'PY'
import re, sys
out, n, hz, u0, s0, u1, s1, lu0, ls0, lu1, ls1 = sys.argv[1:]
n, hz = int(n), int(hz)
us = lambda ticks: int(ticks) / hz * 1e6 / n
rate = float(re.search(r"sessions_per_sec=([0-9.]+)", out).group(1))
user, system = us(int(u1) - int(u0)), us(int(s1) - int(s0))
log = us(int(lu1) + int(ls1) - int(lu0) - int(ls0))
print(f"{rate:7.0f} sessions/s  relaygate user {user:5.1f} + system {system:5.1f} = {user + system:5.1f} us/session  (event-log thread {log:4.1f})")
PY
done
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
"$LOADGEN" --refuser $((PORT + 1)) &
FLOOR=$!
sleep 0.5
"$LOADGEN" --target 127.0.0.1:$((PORT + 1)) --denied 1000 --concurrency 10 >/dev/null
read -r u0 s0 < <(ticks /proc/$FLOOR/stat)
out=$("$LOADGEN" --target 127.0.0.1:$((PORT + 1)) --denied "$DENIED" --concurrency 10 2>&1)
sleep 0.3
read -r u1 s1 < <(ticks /proc/$FLOOR/stat)
python3 - "$out" "$DENIED" "$HZ" "$u0" "$s0" "$u1" "$s1" <<'PY'
import re, sys
out, n, hz, u0, s0, u1, s1 = sys.argv[1:]
n, hz = int(n), int(hz)
us = lambda ticks: int(ticks) / hz * 1e6 / n
rate = float(re.search(r"sessions_per_sec=([0-9.]+)", out).group(1))
user, system = us(int(u1) - int(u0)), us(int(s1) - int(s0))
print(f"{rate:7.0f} sessions/s  the least a server does (smtp_load --refuser): user {user:5.1f} + system {system:5.1f} = {user + system:5.1f} us/session")
PY
