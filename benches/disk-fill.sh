#!/usr/bin/env bash
# The spool's free-space guard under load: a tmpfs of SIZE_MB with FREE_MB
# left free, CLIENTS clients (each from its own 127.0.1.x address) sending
# 20-300 KB messages in a loop for SECONDS, max-message-size MAX. Prints
# how many were stored, refused at MAIL (452 4.3.1), refused after DATA,
# and the least free space seen (sampled every 20 ms). Root (tmpfs).
#
#   sudo bash benches/disk-fill.sh
#   SIZE_MB=64 FREE_MB=12 MAX=1000000 sudo bash benches/disk-fill.sh   (a tiny disk)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-96}
FREE_MB=${FREE_MB:-30}
MAX=${MAX:-10000000}
CLIENTS=${CLIENTS:-20}
SECONDS_=${SECONDS_:-12}
PORT=${PORT:-2640}
[ "$(id -u)" = 0 ] || { echo "needs root (mounts a tmpfs)"; exit 2; }
cargo build --release --quiet --bin relaygate
BIN=${BIN:-target/release/relaygate}
M=$(mktemp -d /var/tmp/relaygate-fill.XXXXXX)
PID=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  umount -l "$M" 2>/dev/null || true
  rm -rf "$M" "$M.log"
}
trap cleanup EXIT
mount -t tmpfs -o "size=${SIZE_MB}m,mode=0700" tmpfs "$M"
RG="$BIN --db $M/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null 2>&1
$RG bind add 127.0.0.1:$PORT >/dev/null
$RG domain add example.com >/dev/null
$RG policy set delivery off >/dev/null
$RG policy set dns-servers 127.0.0.1:9 >/dev/null
$RG policy set max-message-size "$MAX" >/dev/null
"$BIN" --db "$M/relaygate.db" serve --headless 2> "$M.log" &
PID=$!
sleep 2
avail=$(df --output=avail -B1 "$M" | tail -1)
dd if=/dev/zero of="$M/ballast" bs=1M count=$(( (avail - FREE_MB * 1048576) / 1048576 )) 2>/dev/null
echo "disk-fill: $(df -h --output=size,avail "$M" | tail -1 | xargs) (size, free); $CLIENTS clients for ${SECONDS_}s; max-message-size $MAX"
python3 - "$PORT" "$SECONDS_" "$M" "$CLIENTS" <<'PY'
import os, random, smtplib, sys, threading, time
port, dur, mnt, clients = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
stats = {"stored": 0, "452 at MAIL": 0, "refused after DATA": 0, "other": 0}
lock = threading.Lock()
least = [1 << 62]
stop = time.time() + dur
def client(i):
    while time.time() < stop:
        size = random.randint(20_000, 300_000)
        body = "Subject: x\r\n\r\n" + ("y" * 98 + "\r\n") * (size // 100)
        try:
            s = smtplib.SMTP(timeout=30, source_address=(f"127.0.1.{i + 1}", 0))
            s.connect("127.0.0.1", port)
            s.ehlo("c")
            code, _ = s.mail("a@example.com")
            if code == 452:
                k = "452 at MAIL"
            else:
                s.rcpt("u@example.com")
                try:
                    s.data(body)
                    k = "stored"
                except smtplib.SMTPDataError:
                    k = "refused after DATA"
            s.quit()
        except Exception:
            k = "other"
        with lock:
            stats[k] += 1
        time.sleep(0.3)
def watch():
    while time.time() < stop:
        st = os.statvfs(mnt)
        least[0] = min(least[0], st.f_bavail * st.f_frsize)
        time.sleep(0.02)
threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
threads.append(threading.Thread(target=watch))
for t in threads:
    t.start()
for t in threads:
    t.join()
print(", ".join(f"{k} {v}" for k, v in stats.items()) + f"; least free {least[0] / 1048576:.1f} MiB")
PY
echo "log: $(grep -c 'short of room' "$M.log" || true) 'short of room' line(s), $(grep -c 'cannot write\|disk is full\|No space' "$M.log" || true) write failure(s)"
