#!/usr/bin/env bash
# Accepted messages per second, CPU per message and memory: relaygate
# against Debian's Postfix, in the same run, same machine, same load.
#
#   sudo bash benches/compare-postfix.sh [MESSAGES] [SESSIONS]
#
# Both servers listen on loopback only and keep their queue on the same
# disk. Postfix puts every message on hold (no delivery), relaygate only
# spools (delivery is a later issue): both fsync each message before 250.
# The load is Postfix's own smtp-source without -d (a new connection per
# message, as clients send: the headline), then with -d (sessions reused),
# then relaygate's load generator (benches/smtp_load.rs, PIPELINING).
# Server CPU = all CPU the machine spent during the run minus the load
# generator's own, so kernel loopback work counts for both alike.
set -euo pipefail
MESSAGES=${1:-20000}
SESSIONS=${2:-50}
SIZE=2048
RG_PORT=2600
PF_PORT=2526
cd "$(dirname "$0")/.."

. benches/bench-setup.sh

work=$(mktemp -d /var/tmp/relaygate-bench.XXXXXX)
cleanup() {
  set +e
  postfix stop >/dev/null 2>&1
  postsuper -d ALL hold >/dev/null 2>&1
  # Postfix's configuration as it was.
  [ -f "$work/master.cf.orig" ] && cp "$work/master.cf.orig" /etc/postfix/master.cf
  if [ -f "$work/main.cf.orig" ]; then cp "$work/main.cf.orig" /etc/postfix/main.cf
  elif [ -f "$work/master.cf.orig" ]; then rm -f /etc/postfix/main.cf; fi
  [ -n "${RG_PID:-}" ] && kill "$RG_PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ticks_per_sec=$(getconf CLK_TCK)

# run LABEL COMMAND...: runs a load, prints msgs/s and server CPU per message.
run() {
  local label=$1; shift
  local before after start end
  before=$(busy_ticks); start=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$work/time" "$@" > "$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  end=$(date +%s.%N); after=$(busy_ticks)
  read -r lu ls < "$work/time"
  python3 - "$label" "$MESSAGES" "$start" "$end" "$before" "$after" "$ticks_per_sec" "$lu" "$ls" <<'PY'
import sys
label, n, start, end, before, after, hz, lu, ls = sys.argv[1:]
n = int(n); secs = float(end) - float(start)
server_cpu = (int(after) - int(before)) / int(hz) - (float(lu) + float(ls))
print(f"{label:<42} {n/secs:8.0f} msg/s  {secs:6.2f} s  server CPU {server_cpu*1e6/n:7.0f} us/msg  load CPU {(float(lu)+float(ls))*1e6/n:6.0f} us/msg")
PY
}

pss_kib() { local t=0; for p in "$@"; do v=$(awk '/^Pss:/{print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0); t=$((t + ${v:-0})); done; echo $t; }

echo "== relaygate $(git describe --always --dirty 2>/dev/null) on 127.0.0.1:$RG_PORT, spool $work/rg"
mkdir -p "$work/rg"
RG="target/release/relaygate --db $work/rg/relaygate.db"
$RG bind remove 127.0.0.1:2525 >/dev/null
$RG bind add 127.0.0.1:$RG_PORT >/dev/null
$RG domain add example.com >/dev/null
$RG policy set max-sessions-per-ip 20000 >/dev/null
$RG policy set max-sessions 20000 >/dev/null
$RG policy set delivery off >/dev/null   # accept and hold, like Postfix's HOLD below
$RG serve --headless 2> "$work/rg/log" &
RG_PID=$!
sleep 1
run "relaygate  <- smtp-source -s $SESSIONS" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l $SIZE -f load@example.com -t sink@far.test 127.0.0.1:$RG_PORT
run "relaygate  <- smtp-source -d -s $SESSIONS" smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l $SIZE -f load@example.com -t sink@far.test 127.0.0.1:$RG_PORT
run "relaygate  <- smtp_load -c $SESSIONS" "$LOADGEN" --target 127.0.0.1:$RG_PORT --messages "$MESSAGES" --concurrency "$SESSIONS" --size $SIZE
echo "relaygate memory: peak RSS $(awk '/VmHWM/{print $2}' /proc/$RG_PID/status) KiB, PSS now $(pss_kib $RG_PID) KiB"
echo "relaygate 10,000 idle sessions:"
"$LOADGEN" --target 127.0.0.1:$RG_PORT --idle 10000 --pid $RG_PID
kill -TERM $RG_PID; wait $RG_PID || true; RG_PID=

postfix stop >/dev/null 2>&1 || true
cp /etc/postfix/main.cf "$work/main.cf.orig" 2>/dev/null || true
cp /etc/postfix/master.cf "$work/master.cf.orig"
cat > /etc/postfix/main.cf <<CF
compatibility_level = 3.6
myhostname = bench.localdomain
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_end_of_data_restrictions = check_client_access static:HOLD
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
maillog_file = /var/log/postfix.log
CF
sed -i -E "s/^smtp( +)inet/$PF_PORT inet/" /etc/postfix/master.cf
echo "== postfix $(postconf -h mail_version) on 127.0.0.1:$PF_PORT, queue /var/spool/postfix (hold)"
postfix start >/dev/null 2>&1
sleep 2
run "postfix    <- smtp-source -s $SESSIONS" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l $SIZE -f load@example.com -t sink@far.test 127.0.0.1:$PF_PORT
run "postfix    <- smtp-source -d -s $SESSIONS" smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l $SIZE -f load@example.com -t sink@far.test 127.0.0.1:$PF_PORT
run "postfix    <- smtp_load -c $SESSIONS" "$LOADGEN" --target 127.0.0.1:$PF_PORT --messages "$MESSAGES" --concurrency "$SESSIONS" --size $SIZE
PIDS=$(pgrep -d ' ' -f '^/usr/lib/postfix/sbin/|^smtpd|^cleanup|^qmgr' || true)
echo "postfix memory: PSS of its $(echo $PIDS | wc -w) processes $(pss_kib $PIDS) KiB"
