#!/usr/bin/env bash
# User-space instructions per denied session, counted by valgrind's
# callgrind: repeatable where this VM's timings are not (the kernel's share
# is not counted). The engine runs under callgrind; SESSIONS sessions, 10 at
# a time, each refused at RCPT (smtp_load --denied); the counts are zeroed
# after a warm-up and dumped after the load. Prints instructions per session
# for the whole process and for its main parts.
#
#   bash benches/denied-instructions.sh
#   BIN=/path/to/relaygate bash benches/denied-instructions.sh
#   KEEP=/tmp/cg.out bash benches/denied-instructions.sh   (keeps the dump,
#   for callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-2000}
PORT=${PORT:-2617}
command -v valgrind >/dev/null || { echo "needs valgrind (Debian's valgrind package)"; exit 2; }
cargo build --release --quiet --bin relaygate --bench smtp_load
BIN=${BIN:-target/release/relaygate}
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
work=$(mktemp -d /var/tmp/relaygate-instr.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:$PORT >/dev/null
$RG list remove allow 127.0.0.0/8 >/dev/null
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
  "$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
for _ in $(seq 100); do
  "$LOADGEN" --target 127.0.0.1:$PORT --denied 1 --concurrency 1 >/dev/null 2>&1 && break
  sleep 0.2
done
"$LOADGEN" --target 127.0.0.1:$PORT --denied 200 --concurrency 10 >/dev/null
sleep 0.5
callgrind_control -z "$PID" >/dev/null 2>&1
"$LOADGEN" --target 127.0.0.1:$PORT --denied "$SESSIONS" --concurrency 10 >/dev/null
# Let the event log's and the headless log's batches go out.
sleep 0.5
callgrind_control -d "$PID" >/dev/null 2>&1
sleep 0.5
dump=$(ls -t "$work"/cg.out.* | head -n1)
[ -n "${KEEP:-}" ] && cp "$dump" "$KEEP"
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | python3 -c '
import re, sys
n = int(sys.argv[1])
parts = {
    "whole process": "PROGRAM TOTALS",
    "session loop (smtp::server::run)": "smtp::server::run::{{closure}} [",
    "accepting (accept_loop)": "engine::accept_loop::{{closure}} [",
    "event log writer": "decision_log::DecisionLog::append [",
    "headless log": "cli::serve::log_events::{{closure}} [",
    "console feed": "control::feed::FeedTask::run::{{closure}} [",
}
found = {}
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(", line)
    if not m:
        continue
    for label, key in parts.items():
        if key in line and label not in found:
            found[label] = int(m.group(1).replace(",", ""))
for label in parts:
    if label in found:
        print(f"{label:30s} {found[label] / n:10,.0f} instructions per session")
' "$SESSIONS"
