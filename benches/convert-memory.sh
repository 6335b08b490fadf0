#!/usr/bin/env bash
# The engine's memory while it converts a large 8-bit MIME message for a
# next hop without 8BITMIME: one message with a SIZE_MB text part of 8-bit
# characters, relayed to a loopback sink whose EHLO offers no 8BITMIME.
# Prints the engine's peak RSS (VmHWM) after acceptance and after delivery,
# and the size that reached the sink. No root, no Postfix.
#
#   bash benches/convert-memory.sh
#   BIN=/path/to/relaygate bash benches/convert-memory.sh   (an A/B)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-20}
PORT=${PORT:-2651}
SINK=${SINK:-2652}
cargo build --release --quiet --bin relaygate
BIN=${BIN:-target/release/relaygate}
work=$(mktemp -d /var/tmp/relaygate-convmem.XXXXXX)
PID= SINKPID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null && wait "$SINKPID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null 2>&1
$RG bind add 127.0.0.1:$PORT >/dev/null
$RG domain add example.com >/dev/null
$RG policy set dns-servers 127.0.0.1:9 >/dev/null
$RG route add '*' 127.0.0.1:$SINK --tls none >/dev/null
# A sink with no 8BITMIME; it writes the size it received to $work/size.
python3 - "$SINK" "$work/size" > /dev/null 2>&1 <<'PY' &
import socket, sys, threading
port, out = int(sys.argv[1]), sys.argv[2]
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(5)
def serve(c):
    f = c.makefile("rb")
    c.sendall(b"220 old.test\r\n")
    while line := f.readline():
        verb = line.upper()
        if verb.startswith(b"EHLO"):
            c.sendall(b"250 old.test\r\n")
        elif verb.startswith(b"DATA"):
            c.sendall(b"354 go\r\n")
            n = 0
            while (l := f.readline()) != b".\r\n":
                n += len(l)
            c.sendall(b"250 ok\r\n")
            open(out, "w").write(str(n))
        elif verb.startswith(b"QUIT"):
            c.sendall(b"221 bye\r\n")
            return
        else:
            c.sendall(b"250 ok\r\n")
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
PY
SINKPID=$!
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1.5
python3 - "$PORT" "$SIZE_MB" <<'PY'
import smtplib, sys
port, mb = int(sys.argv[1]), int(sys.argv[2])
line = "é" * 38 + "\r\n"
part = line * (mb * 1_000_000 // len(line.encode()))
msg = ("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\nSubject: big\r\n\r\n"
       "--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
       + part + "--zz--\r\n").encode()
s = smtplib.SMTP("127.0.0.1", port)
s.ehlo("c")
s.mail("a@example.com", ["BODY=8BITMIME"])
s.rcpt("b@far.test")
s.data(msg)
s.quit()
PY
accepted=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
for _ in $(seq 120); do [ -s "$work/size" ] && break; sleep 0.5; done
sleep 0.5
delivered=$(awk '/VmHWM/ {print $2}' /proc/$PID/status)
echo "convert-memory: a ${SIZE_MB} MB 8-bit part; peak RSS $((accepted / 1024)) MiB after acceptance, $((delivered / 1024)) MiB after delivery; $(cat "$work/size" 2>/dev/null || echo 0) bytes reached the sink"
