# Sourced by scripts/demo.sh and the benchmark scripts: a private work directory, private
# amibundle identity and AWS settings, and a moto S3+EC2 emulator on a free 127.0.0.1 port, all
# removed on exit. Sets: work, endpoint, moto_server. Needs scripts/setup-emulator.sh to have run.
# Usage: start_emulator NAME   (NAME labels the work directory)
# A caller may set moto_prelude to Python code run inside moto's process before it serves.
# The benchmarks then put the network model in front of it (start_netmodel, below).
start_emulator() {
  moto_server=$(scripts/setup-emulator.sh)
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/amibundle-$1.XXXXXX")
  chmod 700 "$work"
  moto_pid=
  netproxy_pid=
  trap 'stop_emulator; rm -rf "$work"' EXIT
  # Never touch the user's own amibundle key pair or AWS files; never reach real AWS.
  export XDG_CONFIG_HOME=$work/config
  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_EC2_METADATA_DISABLED=true
  export AWS_CONFIG_FILE=$work/aws-config AWS_SHARED_CREDENTIALS_FILE=$work/aws-credentials
  : > "$AWS_CONFIG_FILE"; : > "$AWS_SHARED_CREDENTIALS_FILE"
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_REGION AWS_DEFAULT_REGION
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [ -n "${moto_prelude:-}" ]; then
    # The caller's Python runs in moto's process before its server starts (bench-ebs.sh
    # corrects an emulator gap that way); the venv's interpreter, moto's own entry point.
    "$(dirname "$moto_server")/python" -c "$moto_prelude
import sys
from moto.server import main
sys.exit(main())" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
  else
    "$moto_server" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
  fi
  moto_pid=$!
  endpoint=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$endpoint/moto-api/" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf "$endpoint/moto-api/" >/dev/null || { echo "moto did not start:" >&2; tail "$work/moto.log" >&2; exit 1; }
}

# Stops the emulator and the network model's proxy (for EXIT traps of scripts that set their own).
# Never fails: under `set -e` a failing command here would end the trap before the clean-up.
stop_emulator() {
  local p
  for p in "$netproxy_pid" "$moto_pid"; do
    if [ -n "$p" ]; then
      kill "$p" 2>/dev/null || true
      wait "$p" 2>/dev/null || true
    fi
  done
}

# The network model of the benchmarks (docs/benchmarks.md): time to first byte of every
# response, bandwidth of each connection and of all together (MB/s = 10^6 bytes a second, in
# each direction). Defaults: the environment (NET_LATENCY_MS, NET_CONN_MB_S, NET_TOTAL_MB_S),
# else 30 ms, 16 MB/s and 100 MB/s: S3's per-connection to aggregate ratio scaled under what the
# emulator sustains on 2 cores.
net_latency_ms=${NET_LATENCY_MS:-30}
net_conn_mb_s=${NET_CONN_MB_S:-16}
net_total_mb_s=${NET_TOTAL_MB_S:-100}
net_model=1

# parse_net_flags ARGS...: takes --latency-ms MS, --conn-mb-s MB_S, --total-mb-s MB_S and
# --no-net-model (straight to moto, as before the model) out of ARGS; the others are left in
# the array net_rest.
parse_net_flags() {
  net_rest=()
  while [ $# -gt 0 ]; do
    case $1 in
      --latency-ms) net_latency_ms=$2; shift 2 ;;
      --conn-mb-s) net_conn_mb_s=$2; shift 2 ;;
      --total-mb-s) net_total_mb_s=$2; shift 2 ;;
      --no-net-model) net_model=0; shift ;;
      *) net_rest+=("$1"); shift ;;
    esac
  done
}

# One line describing the path the clients use.
net_model_desc() {
  if [ "$net_model" = 1 ]; then
    echo "network model: ${net_latency_ms} ms to first byte, ${net_conn_mb_s} MB/s a connection, ${net_total_mb_s} MB/s in all (0: no cap)"
  else
    echo "no network model: loopback straight to moto"
  fi
}

# start_netmodel: builds tools/netproxy (seconds: no AWS SDK) and starts it between the clients
# and moto with the model above; `endpoint` becomes the proxy's, `moto_endpoint` keeps moto's.
start_netmodel() {
  moto_endpoint=$endpoint
  [ "$net_model" = 1 ] || return 0
  cargo build --locked --release --quiet --manifest-path tools/netproxy/Cargo.toml
  tools/netproxy/target/release/netproxy --upstream "$moto_endpoint" \
    --latency-ms "$net_latency_ms" --conn-mb-s "$net_conn_mb_s" --total-mb-s "$net_total_mb_s" \
    > "$work/netproxy.addr" 2> "$work/netproxy.log" &
  netproxy_pid=$!
  for _ in $(seq 50); do [ -s "$work/netproxy.addr" ] && break; sleep 0.1; done
  endpoint=$(head -n1 "$work/netproxy.addr")
  curl -sf "$endpoint/moto-api/" > /dev/null || { echo "netproxy did not start:" >&2; cat "$work/netproxy.log" >&2; exit 1; }
}

# The default of `amibundle SUBCOMMAND --concurrency`, read from its help.
default_concurrency() {
  "$bin" "$1" --help | awk '/--concurrency/ { f = 1 } f && /\[default:/ { gsub(/.*default: |\].*/, ""); print; exit }'
}
