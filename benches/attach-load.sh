#!/usr/bin/env bash
# Consoles attached to a running service, and what they cost it.
#
#   bash benches/attach-load.sh        (about 4 minutes after the build)
#
# The engine runs `serve --headless` on 127.0.0.1:$PORT (delivery off);
# consoles attach to it as an administrator's would: `relaygate --db DB`
# in a pseudo-terminal (benches/console_load.rs holds the pty and renders
# it into a vt100 screen, as a terminal emulator would), which finds the
# running engine and attaches over its control socket. The load generator
# is benches/smtp_load.rs (sessions that each send messages in turn, so
# the engine's event rate, not connection setup, is what is measured).
#
# 1. unpaced acceptance with two consoles attached and drawing, against
#    none, ROUNDS times in alternating order (target: >= 95%);
# 2. one attached console at about 2,000 events/s: the console process's
#    CPU (target: < 10% of a core);
# 3. a console that attaches and then stops reading for the whole run:
#    acceptance against none, and the engine's RSS after the run;
# 4. 10,000 open sessions: how long until a console that attaches shows
#    "10000 open" on its Live panel (target: < 1 s).
#
# SECTIONS="1 3" runs some of them (default all); ROUNDS sets section 1's.
set -euo pipefail
PORT=${PORT:-2710}
SIZE=${SIZE:-200x60}
RATE=${RATE:-400}
PACED_SECONDS=${PACED_SECONDS:-20}
MAX_MESSAGES=${MAX_MESSAGES:-60000}
MAX_SESSIONS=${MAX_SESSIONS:-50}
ROUNDS=${ROUNDS:-3}
SECTIONS=${SECTIONS:-1 2 3 4}
IDLE=${IDLE:-10000}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin relaygate --bench smtp_load --bench console_load
BIN=${BIN:-target/release/relaygate}
newest() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -n1; }
LOADGEN=$(newest smtp_load)
HOST=$(newest console_load)
HZ=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /var/tmp/relaygate-attach-bench.XXXXXX)
RG_PID= HOSTS= STALL_PID= IDLE_PID=
want() { case " $SECTIONS " in *" $1 "*) return 0;; esac; return 1; }
none=() two=()
cleanup() {
  set +e
  for p in $HOSTS $STALL_PID $IDLE_PID; do kill "$p" 2>/dev/null; done
  [ -n "$RG_PID" ] && kill -TERM "$RG_PID" 2>/dev/null && wait "$RG_PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
wait_for() { # FILE PATTERN [TENTHS]
  for _ in $(seq "${3:-100}"); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "gave up waiting for '$2' in $1" >&2; exit 1
}

fresh() {
  rm -rf "$1"; mkdir -p "$1"
  local rg="$BIN --db $1/relaygate.db"
  $rg bind remove 127.0.0.1:2525 >/dev/null
  $rg bind add "127.0.0.1:$PORT" >/dev/null
  $rg domain add example.com >/dev/null
  $rg policy set max-sessions 20000 >/dev/null
  $rg policy set max-sessions-per-ip 20000 >/dev/null
  $rg policy set delivery off >/dev/null
}

engine() { # DIR
  "$BIN" --db "$1/relaygate.db" serve --headless 2> "$1/log" &
  RG_PID=$!
  wait_for "$1/log" "listening on 127.0.0.1:$PORT"
}

attach() { # DIR N: N consoles attached; their pids in CONSOLE_PIDS
  CONSOLE_PIDS=
  for i in $(seq "$2"); do
    "$HOST" --bin "$BIN" --db "$1/relaygate.db" --size "$SIZE" --screen "$1/screen$i" > "$1/host$i.out" 2>&1 &
    HOSTS="$HOSTS $!"
    wait_for "$1/host$i.out" '^pid='
    CONSOLE_PIDS="$CONSOLE_PIDS $(sed -n 's/^pid=//p' "$1/host$i.out")"
    wait_for "$1/screen$i" "attached to pid $RG_PID"
  done
}

stop() {
  for p in $HOSTS $STALL_PID; do kill "$p" 2>/dev/null || true; done
  kill -TERM "$RG_PID"; wait "$RG_PID" || true
  RG_PID= HOSTS= STALL_PID=
}

unpaced() { # -> msgs/s
  "$LOADGEN" --target "127.0.0.1:$PORT" --messages "$MAX_MESSAGES" --concurrency "$MAX_SESSIONS" \
    | sed -n 's/.* msgs_per_sec=\([0-9]*\).*/\1/p'
}

echo "relaygate $(git describe --always --dirty 2>/dev/null) · consoles in ${SIZE} ptys · $(nproc) CPUs · load average $(cut -d' ' -f1-3 /proc/loadavg)"
if want 1; then
echo
echo "1. unpaced accepted msg/s ($MAX_MESSAGES messages, $MAX_SESSIONS sessions), none vs two consoles attached"
none=() two=()
for round in $(seq "$ROUNDS"); do
  order="0 2"; [ $(( round % 2 )) -eq 0 ] && order="2 0"
  for n in $order; do
    d=$work/r; fresh "$d"; engine "$d"
    [ "$n" -gt 0 ] && attach "$d" "$n"
    sleep 1
    r=$(unpaced)
    if [ "$n" -gt 0 ]; then
      two+=("$r")
      dropped=$( (grep -ho '[0-9]* events dropped' "$d"/screen* || true) | awk '{s+=$1} END {print s+0}')
      echo "   round $round, 2 consoles: $r msg/s (events the consoles dropped: $dropped)"
    else
      none+=("$r"); echo "   round $round, headless:   $r msg/s"
    fi
    stop
  done
done
python3 - "${none[*]}" "${two[*]}" <<'PY'
import statistics, sys
a, b = ([int(x) for x in s.split()] for s in sys.argv[1:])
print("   per round: " + ", ".join(f"{y / x * 100:.1f}%" for x, y in zip(a, b)))
print(f"   medians {statistics.median(b):.0f} / {statistics.median(a):.0f} = {statistics.median(b) / statistics.median(a) * 100:.1f}% (target >= 95%)")
PY

fi
if want 2; then
echo
echo "2. one attached console at $RATE msg/s over reused sessions (about $(( RATE * 5 )) events/s)"
d=$work/p; fresh "$d"; engine "$d"; attach "$d" 1
c=${CONSOLE_PIDS# }
c0=$(ticks "$c"); s0=$(now)
out=$("$LOADGEN" --target "127.0.0.1:$PORT" --messages $(( RATE * PACED_SECONDS )) --concurrency 20 --rate "$RATE")
s1=$(now); c1=$(ticks "$c")
echo "   $out"
awk -v a="$c0" -v b="$c1" -v s0="$s0" -v s1="$s1" -v hz="$HZ" \
  'BEGIN { printf "   console process CPU: %.1f%% of a core (target < 10%%)\n", (b - a) / hz / (s1 - s0) * 100 }'
stop

fi
if want 3; then
echo
echo "3. a console that stops reading: attached, then reads nothing during an unpaced run"
d=$work/s; fresh "$d"; engine "$d"
python3 - "$d/relaygate.sock" > "$d/stall.out" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.recv(4096)                                   # the hello
s.sendall(b'{"type":"hello","protocol":1}\n')
print("attached", flush=True)
time.sleep(3600)                               # and never read again
PY
STALL_PID=$!
wait_for "$d/stall.out" attached
rss0=$(rss_kib "$RG_PID")
r=$(unpaced)
rss1=$(rss_kib "$RG_PID")
echo "   stalled console: $r msg/s (headless median in section 1: $(python3 -c "import statistics,sys; print(int(statistics.median([int(x) for x in sys.argv[1:]])) if sys.argv[1:] else 'not run')" "${none[@]}")); engine RSS $(( rss0 / 1024 )) MiB before, $(( rss1 / 1024 )) MiB after"
stop

fi
if want 4; then
echo
echo "4. attaching to an engine with $IDLE open sessions"
d=$work/i; fresh "$d"; engine "$d"
"$LOADGEN" --target "127.0.0.1:$PORT" --idle "$IDLE" --pid "$RG_PID" --hold 120 > "$d/idle.out" &
IDLE_PID=$!
wait_for "$d/idle.out" idle_sessions= 1200
cat "$d/idle.out" | sed 's/^/   /'
for attempt in 1 2 3; do
  s0=$(now)
  "$HOST" --bin "$BIN" --db "$d/relaygate.db" --size "$SIZE" --screen "$d/screen-$attempt" > "$d/host-$attempt.out" 2>&1 &
  h=$!
  wait_for "$d/screen-$attempt" "$IDLE open" 100
  s1=$(now)
  awk -v a="$s0" -v b="$s1" -v n="$attempt" 'BEGIN { printf "   attach %d: Live shows every session after %.2f s (target < 1 s; the screen is read every 0.1 s)\n", n, b - a }'
  kill "$h"; wait "$h" 2>/dev/null || true
done
kill "$IDLE_PID" 2>/dev/null || true; IDLE_PID=
stop
fi
