#!/usr/bin/env bash
# What many consoles cost the engine: N connections to the control socket
# (as this user) that say hello and never read, held for a few seconds;
# prints the engine's resident memory and open files before, during and
# after. The caps (8 per user, 64 watchers in all) keep both small.
#
#   bash benches/control-flood.sh            (N=2500)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2500}
cargo build --release --quiet --bin relaygate
BIN=${BIN:-target/release/relaygate}
work=$(mktemp -d /var/tmp/relaygate-flood.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
RG="$BIN --db $work/r.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:0 >/dev/null
"$BIN" --db "$work/r.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1.5
state() { echo "$1: $(grep VmRSS /proc/$PID/status | tr -s ' '), $(ls /proc/$PID/fd | wc -l) open files"; }
state "before"
python3 - "$work/r.sock" "$N" <<'PY' &
import socket, sys, time, resource
path, n = sys.argv[1], int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(b'{"type":"hello","protocol":2}\n')
    held.append(s)
print(f"{len(held)} connections open, none reading", flush=True)
time.sleep(6)
PY
FLOOD=$!
sleep 5
state "during"
wait $FLOOD
sleep 1
state "after"
