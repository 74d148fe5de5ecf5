# Sourced by scripts/demo.sh and scripts/bench-upload.sh: a private work directory, private
# amibundle identity and AWS settings, and a moto S3+EC2 emulator on a free 127.0.0.1 port, all
# removed on exit. Sets: work, endpoint, moto_server. Needs scripts/setup-emulator.sh to have run.
# Usage: start_emulator NAME   (NAME labels the work directory)
start_emulator() {
  moto_server=$(scripts/setup-emulator.sh)
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/amibundle-$1.XXXXXX")
  chmod 700 "$work"
  moto_pid=
  trap '[ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null && wait "$moto_pid" 2>/dev/null; rm -rf "$work"' EXIT
  # Never touch the user's own amibundle key pair or AWS files; never reach real AWS.
  export XDG_CONFIG_HOME=$work/config
  export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local AWS_EC2_METADATA_DISABLED=true
  export AWS_CONFIG_FILE=$work/aws-config AWS_SHARED_CREDENTIALS_FILE=$work/aws-credentials
  : > "$AWS_CONFIG_FILE"; : > "$AWS_SHARED_CREDENTIALS_FILE"
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_REGION AWS_DEFAULT_REGION
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$moto_server" -H 127.0.0.1 -p "$port" > "$work/moto.log" 2>&1 &
  moto_pid=$!
  endpoint=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -sf "$endpoint/moto-api/" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf "$endpoint/moto-api/" >/dev/null || { echo "moto did not start:" >&2; tail "$work/moto.log" >&2; exit 1; }
}
