# Shared by the Postfix comparisons (sourced, not run): installs Postfix
# from Debian when missing, builds relaygate and the load generator, raises
# the file limit, and defines busy_ticks (all CPU the machine has spent).
if ! command -v smtp-source >/dev/null || ! command -v postfix >/dev/null; then
  echo "installing postfix from Debian (no configuration)..."
  apt-get update -qq
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release --quiet --bin relaygate --bench smtp_load
LOADGEN=$(ls -t target/release/deps/smtp_load-* | grep -v '\.d$' | head -n1)
export LOADGEN
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# rg_relay_setup "RELAYGATE --db DB" PORT SINK_PORT: a database whose one
# binding is 127.0.0.1:PORT, relaying everything to 127.0.0.1:SINK_PORT
# (no TLS), with the session limits out of the load's way.
rg_relay_setup() {
  local rg=$1 port=$2 sink=$3
  $rg bind remove 127.0.0.1:2525 >/dev/null
  $rg bind add 127.0.0.1:"$port" >/dev/null
  $rg domain add example.com >/dev/null
  $rg policy set max-sessions 20000 >/dev/null
  $rg policy set max-sessions-per-ip 20000 >/dev/null
  $rg route add '*' 127.0.0.1:"$sink" --tls none >/dev/null
}
