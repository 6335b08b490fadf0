#!/usr/bin/env bash
# What a relayed message costs relaygate, thread by thread: MESSAGES
# messages of 2 KB from Postfix's smtp-source (SESSIONS sessions, a new
# connection per message; REUSE=-d reuses them) relayed to a sink on
# loopback (benches/smtp_load.rs --sink). Prints accepted and end-to-end
# msg/s, smtp-source's own CPU per message (this VM's speed of the moment),
# and per relaygate thread: context switches and user/system CPU per
# message. Runs no Postfix server, only its smtp-source (installed with
# Debian's postfix package when missing, which needs root).
#
#   bash benches/relay-cost.sh
#   BIN=/path/to/relaygate bash benches/relay-cost.sh
#
# Interleave two binaries for an A/B on this noisy VM:
#   for i in 1 2 3; do for b in old new; do BIN=/tmp/$b bash benches/relay-cost.sh; done; done
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-30000}
SESSIONS=${SESSIONS:-50}
PORT=${PORT:-2612}
SINK_PORT=${SINK_PORT:-2613}
# Builds relaygate and the load generator (LOADGEN); installs Postfix's
# package for smtp-source when missing.
. benches/bench-setup.sh
BIN=${BIN:-target/release/relaygate}
work=$(mktemp -d /var/tmp/relaygate-relay-cost.XXXXXX)
PID= SINK=
cleanup() {
  [ -n "$SINK" ] && kill "$SINK" 2>/dev/null
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
rg_relay_setup "$RG" $PORT $SINK_PORT
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
# Per thread: name, voluntary and involuntary switches, user and system ticks.
snap() {
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '/ctxt/{printf "%s ", $2}' "$t/status")$(sed 's/^.*) //' "$t/stat" | awk '{print $12, $13}')"
  done
}
"$LOADGEN" --sink $SINK_PORT --messages "$MESSAGES" > "$work/sink.out" 2>&1 &
SINK=$!
sleep 0.3
snap > "$work/before"
start=$(date +%s.%N)
/usr/bin/time -f "%U %S" -o "$work/time" smtp-source ${REUSE:-} -s "$SESSIONS" -m "$MESSAGES" -l 2048 \
  -f load@example.com -t sink@far.test 127.0.0.1:$PORT > "$work/load.out" 2>&1
accepted=$(date +%s.%N)
if ! timeout 600 tail --pid=$SINK -f /dev/null; then echo "the sink did not get every message"; exit 1; fi
SINK=
done_at=$(date +%s.%N)
# The event log writes its last batch after the load: wait until idle.
for _ in $(seq 30); do
  a=$(sed 's/^.*) //' /proc/$PID/stat | awk '{print $12 + $13}'); sleep 0.3
  [ "$a" = "$(sed 's/^.*) //' /proc/$PID/stat | awk '{print $12 + $13}')" ] && break
done
snap > "$work/after"
python3 - "$MESSAGES" "$start" "$accepted" "$done_at" "$(getconf CLK_TCK)" "$work/time" "$work/before" "$work/after" <<'PY'
import sys
n, start, accepted, done, hz, timef, before, after = sys.argv[1:]
n, hz = int(n), int(hz)
start, accepted, done = float(start), float(accepted), float(done)
lu, ls = map(float, open(timef).read().split()[-2:])
print(f"accepted {n/(accepted-start):6.0f} msg/s  end to end {n/(done-start):6.0f} msg/s  "
      f"smtp-source {(lu+ls)*1e6/n:5.1f} us/msg")
rows = lambda f: [l.split() for l in open(f) if l.strip()]
us = lambda ticks: ticks / hz * 1e6 / n
total_u = total_s = 0
for b, a in zip(rows(before), rows(after)):
    vol, inv, u, s = (int(a[i]) - int(b[i]) for i in range(1, 5))
    total_u += u; total_s += s
    if vol or inv or u or s:
        print(f"  {a[0]:<18} switches {vol:6d} + {inv:6d} involuntary  user {us(u):5.1f} + system {us(s):5.1f} us/msg")
print(f"  relaygate          user {us(total_u):5.1f} + system {us(total_s):5.1f} = {us(total_u+total_s):5.1f} us/msg")
PY
