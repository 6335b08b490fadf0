#!/usr/bin/env bash
# How long /metrics takes to answer with SESSIONS (10,000) sessions open:
# the engine on loopback with metrics on, SESSIONS idle connections held
# open (each has had its greeting), then SCRAPES scrapes timed one by one.
#
#   bash benches/metrics-scrape.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-10000}
SCRAPES=${SCRAPES:-50}
cargo build --release --quiet --bin relaygate
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /var/tmp/relaygate-metrics.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
RG="target/release/relaygate --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:2620 >/dev/null
$RG policy set max-sessions 20000 >/dev/null
$RG policy set metrics-listen 127.0.0.1:9465 >/dev/null
target/release/relaygate --db "$work/relaygate.db" serve --headless 2>/dev/null &
PID=$!
sleep 1
python3 - "$SESSIONS" "$SCRAPES" "$PID" <<'PY'
import socket, sys, time, statistics
n, scrapes, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
held = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 2620))
    held.append(s)
for s in held:
    s.recv(512)
time.sleep(0.5)
def scrape():
    t = time.perf_counter()
    c = socket.create_connection(("127.0.0.1", 9465))
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    body = b""
    while True:
        b = c.recv(65536)
        if not b: break
        body += b
    c.close()
    return (time.perf_counter() - t) * 1000, body
scrape()
times = []
for _ in range(scrapes):
    ms, body = scrape()
    times.append(ms)
open_line = [l for l in body.decode().splitlines() if l.startswith("relaygate_sessions_open")]
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"{n} sessions open ({open_line[0] if open_line else '?'}), engine RSS {rss} KiB")
print(f"/metrics: median {statistics.median(times):.2f} ms, max {max(times):.2f} ms over {scrapes} scrapes, {len(body)} bytes")
PY
