#!/usr/bin/env bash
# End-to-end relaying, relaygate against Debian's Postfix in the same run:
# a load of MESSAGES messages of 2 KB over SESSIONS concurrent sessions goes
# in, through the relay, out to a sink on loopback; the time runs from the
# start of the load until the last message has reached the sink.
#
#   sudo bash benches/relay-e2e.sh [MESSAGES] [SESSIONS]
#
# Load: Postfix's smtp-source -d for both. Sink: the load generator's sink
# mode (benches/smtp_load.rs --sink), which answers 250 to everything.
# Both relays use their default delivery concurrency to one destination
# (20) and no TLS to the sink; both fsync every message before 250.
set -euo pipefail
MESSAGES=${1:-20000}
SESSIONS=${2:-50}
SIZE=2048
RG_PORT=2600
PF_PORT=2526
SINK_PORT=2700
cd "$(dirname "$0")/.."

. benches/bench-setup.sh
work=$(mktemp -d /var/tmp/relaygate-e2e.XXXXXX)
trap 'postfix stop >/dev/null 2>&1 || true; [ -n "${RG_PID:-}" ] && kill "$RG_PID" 2>/dev/null; [ -n "${SINK_PID:-}" ] && kill "$SINK_PID" 2>/dev/null; rm -rf "$work"' EXIT

# relay LABEL PORT: sink up, load in, wait for the sink, print the figures.
relay() {
  local label=$1 port=$2
  "$LOADGEN" --sink $SINK_PORT --messages "$MESSAGES" > "$work/sink.out" 2>&1 &
  SINK_PID=$!
  sleep 0.5
  local before start
  before=$(busy_ticks)
  start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/time" smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l $SIZE \
    -f load@example.com -t sink@far.test 127.0.0.1:"$port" > "$work/load.out" 2>&1
  local accepted_at
  accepted_at=$(date +%s.%N)
  if ! timeout 600 tail --pid=$SINK_PID -f /dev/null; then echo "sink did not get every message"; exit 1; fi
  SINK_PID=
  local after
  after=$(busy_ticks)
  read -r lu ls < "$work/time"
  python3 - "$label" "$MESSAGES" "$start" "$accepted_at" "$(cat "$work/sink.out")" "$before" "$after" "$(getconf CLK_TCK)" "$lu" "$ls" <<'PY'
import sys, re
label, n, start, accepted, sink, before, after, hz, lu, ls = sys.argv[1:]
n = int(n)
last = float(re.search(r"sink_last_message_unix=([0-9.]+)", sink).group(1))
secs = last - float(start)
cpu = (int(after) - int(before)) / int(hz) - (float(lu) + float(ls))
print(f"{label:<12} {n/secs:8.0f} msg/s end to end  ({secs:6.2f} s; all accepted after {float(accepted)-float(start):6.2f} s)  relay+sink CPU {cpu*1e6/n:6.0f} us/msg")
PY
}

echo "== relaygate $(git describe --always --dirty 2>/dev/null) -> sink 127.0.0.1:$SINK_PORT"
mkdir -p "$work/rg"
RG="target/release/relaygate --db $work/rg/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:$RG_PORT >/dev/null
$RG domain add example.com >/dev/null
$RG policy set max-sessions-per-ip 20000 >/dev/null
$RG route add '*' 127.0.0.1:$SINK_PORT --tls none >/dev/null
$RG serve --headless 2> "$work/rg/log" &
RG_PID=$!
sleep 1
relay relaygate $RG_PORT
kill -TERM $RG_PID; wait $RG_PID || true; RG_PID=

postfix stop >/dev/null 2>&1 || true
cp /etc/postfix/master.cf "$work/master.cf.orig"
[ -f /etc/postfix/main.cf ] && cp /etc/postfix/main.cf "$work/main.cf.orig"
cat > /etc/postfix/main.cf <<CF
compatibility_level = 3.6
myhostname = bench.localdomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
relayhost = [127.0.0.1]:$SINK_PORT
smtp_tls_security_level = none
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
maillog_file = /var/log/postfix.log
CF
sed -i -E "s/^smtp( +)inet/$PF_PORT inet/" /etc/postfix/master.cf
echo "== postfix $(postconf -h mail_version) -> sink 127.0.0.1:$SINK_PORT"
postfix start >/dev/null 2>&1
sleep 2
relay postfix $PF_PORT
postfix stop >/dev/null 2>&1 || true
cp "$work/master.cf.orig" /etc/postfix/master.cf
[ -f "$work/main.cf.orig" ] && cp "$work/main.cf.orig" /etc/postfix/main.cf
