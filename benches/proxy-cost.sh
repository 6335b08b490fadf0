#!/usr/bin/env bash
# What the PROXY header costs the engine per connection: SESSIONS short
# sessions (connect, greeting, QUIT, 221, close) to a plain binding and to a
# PROXY binding (each session sending a v2 header first, as HAProxy's
# send-proxy-v2 does), interleaved ROUNDS times; the engine's own CPU per
# session from /proc for each.
#
#   bash benches/proxy-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-20000}
ROUNDS=${ROUNDS:-3}
cargo build --release --quiet --bin relaygate
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /var/tmp/relaygate-proxy.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
RG="target/release/relaygate --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:2630 >/dev/null
$RG bind add 127.0.0.1:2631 --proxy-protocol --trusted-proxy 127.0.0.1 >/dev/null
$RG policy set max-sessions 20000 >/dev/null
target/release/relaygate --db "$work/relaygate.db" serve --headless 2>/dev/null &
PID=$!
sleep 1
python3 - "$SESSIONS" "$ROUNDS" "$PID" <<'PY'
import os, socket, sys, threading, time
n, rounds, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
hz = os.sysconf("SC_CLK_TCK")
def ticks():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
# A v2 header: PROXY, TCP over IPv4, 203.0.113.7:51234 -> 127.0.0.1:2631.
header = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11, 0, 12, 203, 0, 113, 7, 127, 0, 0, 1, 0xc8, 0x22, 0x0a, 0x47])
def load(port, proxied, count):
    def worker(k):
        for _ in range(k):
            s = socket.create_connection(("127.0.0.1", port))
            if proxied:
                s.sendall(header)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"QUIT\r\n")
            f.readline()
            s.close()
    threads = [threading.Thread(target=worker, args=(count // 8,)) for _ in range(8)]
    t0, c0 = time.time(), ticks()
    for t in threads: t.start()
    for t in threads: t.join()
    return (ticks() - c0) / hz * 1e6 / count, count / (time.time() - t0)
for r in range(rounds):
    for port, proxied, name in [(2630, False, "plain"), (2631, True, "PROXY v2")]:
        us, rate = load(port, proxied, n)
        print(f"round {r + 1}  {name:<9} {us:5.1f} us engine CPU per session  ({rate:.0f} sessions/s)")
PY
