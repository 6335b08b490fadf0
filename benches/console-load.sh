#!/usr/bin/env bash
# The console under load: the release binary with its console drawing into
# a pseudo-terminal (benches/console_load.rs holds the pty and reads it into
# a vt100 screen, as a terminal emulator would) against `serve --headless`,
# both driven by the load generator (benches/smtp_load.rs) over loopback.
#
#   bash benches/console-load.sh          (about 2 minutes after the build)
#
# Loads: paced at RATE messages/s (default 400: each message in a reused
# session is 5 engine events, MAIL, RCPT, the decision, DATA and the
# acceptance, so 2,000 events/s; a session adds 4 more: opened, EHLO, QUIT,
# closed), then unpaced (as fast as the engine accepts) ROUNDS times,
# headless and console in turn, which goes first alternating. Each unpaced
# round ends with a control run: headless again, next to a plain CPU burner
# (python, nothing to do with relaygate) taking as much of a core as the
# console thread just took; on a small machine that shows how much of the
# gap is only CPU taken away. Every run gets a fresh database on
# 127.0.0.1:$PORT with `delivery off`, so nothing is delivered.
#
# Reported per run: accepted messages/s and engine events/s; the console
# thread's CPU (the loop that takes the events in and draws: the process's
# main thread, /proc/PID/task/PID/stat) as % of one core; the process's CPU
# (all threads); the terminal's (the pty reader and vt100 screen); the whole
# machine's; frames drawn per second (synchronized updates); the dropped
# events the console shows (its status line, read off the screen; the two
# event channels are bounded, 65,536 events each, so a slow console drops
# and counts, it cannot grow a backlog in memory); and how long after the
# load ended the screen's "msgs" counter showed every accepted message (a
# backlog shows as a long catch-up).
set -euo pipefail
PORT=${PORT:-2700}
SIZE=${SIZE:-200x60}
RATE=${RATE:-400}
PACED_SECONDS=${PACED_SECONDS:-20}
PACED_SESSIONS=${PACED_SESSIONS:-20}
MAX_MESSAGES=${MAX_MESSAGES:-80000}
MAX_SESSIONS=${MAX_SESSIONS:-50}
ROUNDS=${ROUNDS:-2}
IDLE_SECONDS=${IDLE_SECONDS:-10}
cd "$(dirname "$0")/.."

cargo build --release --quiet --bin relaygate --bench smtp_load --bench console_load
# BIN=path/to/relaygate measures another build with the same harness.
BIN=${BIN:-target/release/relaygate}
newest() { ls -t target/release/deps/"$1"-* | grep -v '\.d$' | head -n1; }
LOADGEN=$(newest smtp_load)
HOST=$(newest console_load)
HZ=$(getconf CLK_TCK)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

work=$(mktemp -d /var/tmp/relaygate-console-bench.XXXXXX)
RG_PID= HOST_PID= BURN_PID=
cleanup() {
  set +e
  [ -n "$BURN_PID" ] && kill "$BURN_PID" 2>/dev/null
  [ -n "$RG_PID" ] && kill -TERM "$RG_PID" 2>/dev/null && wait "$RG_PID" 2>/dev/null
  [ -n "$HOST_PID" ] && wait "$HOST_PID" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
results=$work/results
: > "$results"

# ticks PID [TID]: user+system CPU ticks of a process, or of one thread.
ticks() {
  local f=/proc/$1/stat
  [ -n "${2:-}" ] && f=/proc/$1/task/$2/stat
  # The fields after the ")" that closes the command name: utime is the 12th.
  sed 's/^.*) //' "$f" | awk '{print $12 + $13}'
}
# machine: busy and total CPU ticks of the whole machine, all CPUs.
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9 "," $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
now() { date +%s.%N; }
frames() { sed -n '1s/.*frames=\([0-9]*\).*/\1/p' "$1"; }

# fresh DIR: a database listening on 127.0.0.1:$PORT, nothing delivered.
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

wait_for() { # FILE PATTERN: until FILE holds PATTERN (10 s at most)
  for _ in $(seq 100); do grep -q -- "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "gave up waiting for '$2' in $1" >&2; exit 1
}

# start MODE DIR: relaygate with its console in the pty, or headless.
start() {
  if [ "$1" = console ]; then
    "$HOST" --bin "$BIN" --db "$2/relaygate.db" --size "$SIZE" --screen "$2/screen" > "$2/host.out" 2>&1 &
    HOST_PID=$!
    wait_for "$2/host.out" '^pid='
    RG_PID=$(sed -n 's/^pid=//p' "$2/host.out")
    wait_for "$2/screen" "listening 127.0.0.1:$PORT"
  else
    "$BIN" --db "$2/relaygate.db" serve --headless 2> "$2/log" &
    RG_PID=$!
    wait_for "$2/log" "listening on 127.0.0.1:$PORT"
  fi
  sleep 1
}

stop() {
  kill -TERM "$RG_PID"
  if [ -n "$HOST_PID" ]; then wait "$HOST_PID" || true; else wait "$RG_PID" || true; fi
  RG_PID= HOST_PID=
}

# burn FRACTION: a busy loop taking FRACTION of one core until killed.
burn() {
  python3 -c '
import sys, time
duty, period = float(sys.argv[1]), 0.005
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < period * duty:
        pass
    time.sleep(period * (1 - duty))' "$1" &
  BURN_PID=$!
}

# The console thread's share of a core in the last console run, 0..1.
LAST_CONSOLE_SHARE=0

# record MODE LABEL ACCEPTED MSGS_S S0 S1 P0 P1 T0 T1 F0 F1 RSS DROPPED CATCHUP H0 H1 M0 M1
record() { local IFS='|'; echo "$*" >> "$results"; }

# measure MODE LABEL LOADGEN-ARGS...: one run on a fresh database.
# MODE: console, headless, or burn (headless next to the burner).
measure() {
  local mode=$1 label=$2; shift 2
  local dir=$work/run
  fresh "$dir"
  start "$([ "$mode" = console ] && echo console || echo headless)" "$dir"
  local p0 t0 f0=0 h0=0 m0 s0 s1 p1 t1 f1=0 h1=0 m1 rss out accepted msgs_s catchup=- dropped=-
  [ "$mode" = burn ] && burn "$LAST_CONSOLE_SHARE"
  [ "$mode" = console ] && f0=$(frames "$dir/screen") && h0=$(ticks "$HOST_PID")
  m0=$(machine); p0=$(ticks "$RG_PID"); t0=$(ticks "$RG_PID" "$RG_PID"); s0=$(now)
  out=$("$LOADGEN" --target "127.0.0.1:$PORT" "$@")
  s1=$(now); p1=$(ticks "$RG_PID"); t1=$(ticks "$RG_PID" "$RG_PID"); m1=$(machine)
  [ "$mode" = console ] && h1=$(ticks "$HOST_PID")
  [ -n "$BURN_PID" ] && { kill "$BURN_PID"; wait "$BURN_PID" 2>/dev/null || true; BURN_PID=; }
  rss=$(rss_kib "$RG_PID")
  accepted=$(sed -n 's/.* accepted=\([0-9]*\) .*/\1/p' <<< "$out")
  msgs_s=$(sed -n 's/.* msgs_per_sec=\([0-9]*\).*/\1/p' <<< "$out")
  if [ "$mode" = console ]; then
    LAST_CONSOLE_SHARE=$(awk -v a="$t0" -v b="$t1" -v s0="$s0" -v s1="$s1" -v hz="$HZ" \
      'BEGIN { printf "%.3f", (b - a) / hz / (s1 - s0) }')
    f1=$(frames "$dir/screen")
    # The screen counts every accepted message once it has taken them in.
    catchup=timeout
    for i in $(seq 0 100); do
      if grep -q "msgs $accepted " "$dir/screen"; then catchup=$(( i * 100 )); break; fi
      sleep 0.1
    done
    dropped=$(grep -o '[0-9]* events dropped' "$dir/screen" | awk '{print $1}' || true)
    dropped=${dropped:-0}
  fi
  stop
  [ "$mode" = burn ] && label="$label +burn $(awk -v s="$LAST_CONSOLE_SHARE" 'BEGIN { printf "%.0f%%", s * 100 }')"
  record "$mode" "$label" "$accepted" "$msgs_s" "$s0" "$s1" "$p0" "$p1" "$t0" "$t1" \
    "$f0" "$f1" "$rss" "$dropped" "$catchup" "$h0" "$h1" "$m0" "$m1"
}

echo "relaygate $(git describe --always --dirty 2>/dev/null) · console in a ${SIZE} pty · $(nproc) CPUs · load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Idle: the console up, no traffic.
fresh "$work/idle"
start console "$work/idle"
m0=$(machine); h0=$(ticks "$HOST_PID"); p0=$(ticks "$RG_PID"); t0=$(ticks "$RG_PID" "$RG_PID")
f0=$(frames "$work/idle/screen"); s0=$(now)
sleep "$IDLE_SECONDS"
s1=$(now); p1=$(ticks "$RG_PID"); t1=$(ticks "$RG_PID" "$RG_PID"); h1=$(ticks "$HOST_PID"); m1=$(machine)
f1=$(frames "$work/idle/screen")
record console "idle, no traffic" 0 0 "$s0" "$s1" "$p0" "$p1" "$t0" "$t1" "$f0" "$f1" \
  "$(rss_kib "$RG_PID")" - - "$h0" "$h1" "$m0" "$m1"
stop

for mode in headless console; do
  measure "$mode" "paced $RATE msg/s" --messages $(( RATE * PACED_SECONDS )) \
    --concurrency "$PACED_SESSIONS" --rate "$RATE"
done
for round in $(seq "$ROUNDS"); do
  order="headless console"
  [ $(( round % 2 )) -eq 0 ] && order="console headless"
  for mode in $order burn; do
    measure "$mode" "unpaced #$round" --messages "$MAX_MESSAGES" --concurrency "$MAX_SESSIONS"
  done
done

python3 - "$results" "$HZ" "$PACED_SESSIONS" "$MAX_SESSIONS" <<'PY'
import os, statistics, sys
path, hz, paced_sessions, max_sessions = sys.argv[1], *map(int, sys.argv[2:])
ncpu = os.cpu_count()

def machine(m0, m1):
    (b0, a0), (b1, a1) = (map(int, m.split(",")) for m in (m0, m1))
    return f"{(b1 - b0) / max(a1 - a0, 1) * ncpu * 100:.0f}%"

cols = ["run", "load", "accepted", "msg/s", "events/s", "console thread", "process",
        "terminal", "machine", "frames/s", "dropped", "caught up", "RSS MiB"]
table, unpaced = [], {}
for row in (l.rstrip("\n").split("|") for l in open(path)):
    mode, label, acc, msgs, s0, s1, p0, p1, t0, t1, f0, f1, rss, dropped, catchup, h0, h1, m0, m1 = row
    secs = float(s1) - float(s0)
    acc, msgs = int(acc), int(msgs)
    sessions = 0 if acc == 0 else paced_sessions if label.startswith("paced") else max_sessions
    events = (5 * acc + 4 * sessions) / secs
    console = mode == "console"
    if label.startswith("unpaced"):
        unpaced.setdefault(mode, {})[label.split()[1]] = msgs
    pct = lambda a, b: f"{(int(b) - int(a)) / hz / secs * 100:.1f}%"
    table.append([
        "headless" if mode == "burn" else mode, label, str(acc), str(msgs), f"{events:.0f}",
        pct(t0, t1) if console else "-", pct(p0, p1), pct(h0, h1) if console else "-",
        machine(m0, m1), f"{(int(f1) - int(f0)) / secs:.1f}" if console else "-",
        dropped, catchup + " ms" if catchup.isdigit() else catchup, f"{int(rss) / 1024:.1f}",
    ])
widths = [max(len(r[i]) for r in table + [cols]) for i in range(len(cols))]
line = lambda r: " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
print()
print(line(cols))
print("-+-".join("-" * w for w in widths))
for r in table:
    print(line(r))
print()

def ratio(over, under, what):
    a, b = unpaced.get(over, {}), unpaced.get(under, {})
    rounds = [r for r in a if r in b]
    if rounds:
        per = ", ".join(f"{a[r] / b[r] * 100:.1f}%" for r in rounds)
        ma, mb = statistics.median(a[r] for r in rounds), statistics.median(b[r] for r in rounds)
        print(f"{what}: per round {per}; medians {ma:.0f} / {mb:.0f} = {ma / mb * 100:.1f}%")

ratio("console", "headless", "unpaced accepted msg/s, console / headless (target >= 95%)")
ratio("burn", "headless", "control, headless next to a burner taking the console thread's CPU / headless")
print("console thread: the console loop (the process's main thread), % of one core; process: all its threads;")
print(f"terminal: the pty reader and vt100 screen standing in for a terminal emulator; machine: all CPUs busy, of {ncpu * 100}%;")
print("caught up: from the end of the load until the screen counted every accepted message (read every 100 ms).")
PY
