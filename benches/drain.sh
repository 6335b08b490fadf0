#!/usr/bin/env bash
# The drain of a backlog: MESSAGES messages of 2 KB accepted with
# `delivery off` (smtp-source -d, 50 sessions), then `delivery on`, timed
# until the sink (smtp_load --sink) has them all; relaygate's CPU per
# message over the drain. DKIM=1 signs every message (an RSA 2048 key for
# example.com, the load's From: domain). Needs smtp-source (Debian's
# postfix package, installed when missing) and openssl for DKIM=1.
#
#   bash benches/drain.sh            DKIM=1 bash benches/drain.sh
#   HELD=40000 bash benches/drain.sh (40,000 held messages queued before the
#                                     backlog: the drain must not slow)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-20000}
PORT=${PORT:-2640}
SINK=${SINK:-2641}
# Builds relaygate and the load generator (LOADGEN); installs Postfix's
# package for smtp-source when missing (root).
. benches/bench-setup.sh
BIN=${BIN:-target/release/relaygate}
work=$(mktemp -d /var/tmp/relaygate-drain.XXXXXX)
PID=
SP=
cleanup() {
  [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  [ -n "$SP" ] && kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
RG="$BIN --db $work/relaygate.db"
rg_relay_setup "$RG" $PORT $SINK
if [ "${DKIM:-}" = 1 ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/dkim.pem" 2>/dev/null
  $RG dkim add example.com --selector bench --key-file "$work/dkim.pem" >/dev/null
fi
$RG policy set delivery off >/dev/null
"$BIN" --db "$work/relaygate.db" serve --headless 2> "$work/log" &
PID=$!
sleep 1
if [ "${HELD:-0}" -gt 0 ]; then
  # HELD messages queued first and held: the drain must not read past them.
  smtp-source -d -s 50 -m "$HELD" -l 2048 -f load@example.com -t held@hold.test 127.0.0.1:$PORT >/dev/null 2>&1
  $RG queue hold --domain hold.test >/dev/null
fi
smtp-source -d -s 50 -m "$MESSAGES" -l 2048 -f load@example.com -t sink@far.test 127.0.0.1:$PORT >/dev/null 2>&1
"$LOADGEN" --sink $SINK --messages "$MESSAGES" > "$work/sink.out" 2>&1 &
SP=$!
sleep 0.5
c0=$(awk '{print $14+$15}' /proc/$PID/stat); t0=$(date +%s.%N)
$RG policy set delivery on >/dev/null
wait $SP; SP=
t1=$(date +%s.%N); c1=$(awk '{print $14+$15}' /proc/$PID/stat)
HZ=$(getconf CLK_TCK)
python3 -c "import sys; m,t0,t1,c0,c1,hz=map(float,sys.argv[1:]); print(f'drain of {int(m)} messages{\" (DKIM)\" if \"$([ "${DKIM:-}" = 1 ] && echo 1)\" else \"\"}: {m/(t1-t0):.0f} msg/s, relaygate CPU {(c1-c0)/hz*1e6/m:.0f} us/msg')" "$MESSAGES" "$t0" "$t1" "$c0" "$c1" "$HZ"
