#!/bin/sh
# etcd's entrypoint next to the etcdbrctl sidecar (StatefulSet etcd container).
#
# 1. Picks the validation mode from the marker written when etcd last exited: "sanity" after a
#    clean stop (exit 0, SIGINT 130, SIGTERM 143 when this script was asked to stop it), "full"
#    otherwise (crash, kill, first start, and an etcd that exits by itself: a member removed
#    from its cluster exits 0, and its data must be judged against the cluster again).
# 2. Drives the sidecar's initialization: polls /initialization/status; on "New" starts it with
#    that mode; waits for "Successful"; on "Failed" logs it, waits (backoff 1 s doubling to
#    MAX_BACKOFF) and starts again (the failed state resets to "New" once read). A "Successful"
#    it did not ask for in this run (stale, from before a container restart) is not trusted:
#    it starts a validation of its own.
# 3. Fetches the member's etcd configuration from /config and runs etcd with it.
# 4. When etcd exits, writes its exit code to the marker and exits with it (the container
#    restarts and the next run validates accordingly). etcd runs as a child, not exec'd, so
#    that its exit code can be recorded; SIGTERM/SIGINT are forwarded to it.
#
# `etcd-bootstrap.sh restore-cluster` (run by an operator in the etcd container, e.g. with
# kubectl exec, while the script runs): asks for this member's data to be given up (moved aside,
# not deleted) and rebuilt: from the running cluster if there is one, else (quorum lost, the
# other members' data gone) together with them from the store. It writes the request file the
# sidecar honours (<DATA_DIR>.etcdbr-restore-requested) and stops etcd; the script's next run
# drives the initialization as usual.
#
# Settings (environment):
#   BACKUP_URL    the sidecar            (default http://127.0.0.1:8080; https:// for TLS)
#   CURL_OPTS     extra curl options     (TLS: "--cacert /var/etcd/ssl/ca/ca.crt", client certs)
#   TOKEN_FILE    the sidecar's API token (--server-token-file; its first line is sent as
#                 "Authorization: Bearer", read at every call so that a rotation needs no restart;
#                 default: none)
#   ETCD_BIN      the etcd binary        (default: etcd on PATH)
#   CONFIG_FILE   where /config is saved (default /tmp/etcd.conf.yaml)
#   MARKER        the exit-code marker   (default /var/etcd/data/validation_marker)
#   MAX_BACKOFF   seconds                (default 30)
#   MAX_WAIT      give up after this many seconds without success (default 0: never)
#   DATA_DIR      etcd's data directory  (default /var/etcd/data/new.etcd)
#   PIDFILE       this script's PID      (default: next to CONFIG_FILE)
set -u

BACKUP_URL=${BACKUP_URL:-http://127.0.0.1:8080}
CURL_OPTS=${CURL_OPTS:-}
TOKEN_FILE=${TOKEN_FILE:-}
ETCD_BIN=${ETCD_BIN:-etcd}
CONFIG_FILE=${CONFIG_FILE:-/tmp/etcd.conf.yaml}
MARKER=${MARKER:-/var/etcd/data/validation_marker}
MAX_BACKOFF=${MAX_BACKOFF:-30}
MAX_WAIT=${MAX_WAIT:-0}
DATA_DIR=${DATA_DIR:-/var/etcd/data/new.etcd}
PIDFILE=${PIDFILE:-$(dirname "$CONFIG_FILE")/etcd-bootstrap.pid}

log() { echo "etcd-bootstrap: $(date -u +%Y-%m-%dT%H:%M:%SZ) $*" >&2; }

# auth_header: the Authorization header line for curl's "-H @-" (nothing without TOKEN_FILE);
# through stdin, not argv, so that the token is not in the process list
auth_header() {
  [ -n "$TOKEN_FILE" ] || return 0
  token=$(head -n 1 "$TOKEN_FILE" 2>/dev/null | tr -d ' \t\r')
  if [ -z "$token" ]; then
    log "no token in TOKEN_FILE $TOKEN_FILE: the sidecar will refuse the call"
    return 0
  fi
  printf 'Authorization: Bearer %s\n' "$token"
}

# curl_get PATH [OUT]: body on stdout (or to OUT); non-zero on connection failure or non-2xx
curl_get() {
  # shellcheck disable=SC2086 # CURL_OPTS is a list of options
  if [ -n "${2:-}" ]; then
    auth_header | curl -fsS --max-time 10 $CURL_OPTS -H @- -o "$2" "$BACKUP_URL$1"
  else
    auth_header | curl -fsS --max-time 10 $CURL_OPTS -H @- "$BACKUP_URL$1"
  fi
}

if [ "${1:-}" = restore-cluster ]; then
  pid=$(cat "$PIDFILE" 2>/dev/null) || {
    log "no running etcd-bootstrap.sh (no $PIDFILE): run this in the etcd container of the member"
    exit 1
  }
  echo "requested $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$DATA_DIR.etcdbr-restore-requested" || exit 1
  log "restore requested ($DATA_DIR.etcdbr-restore-requested): stopping etcd; its data is moved aside and rebuilt"
  kill -TERM "$pid"
  exit 0
elif [ $# -gt 0 ]; then
  log "unknown argument $1 (the only one is restore-cluster)"
  exit 2
fi
echo $$ >"$PIDFILE"

mode=full
if [ -f "$MARKER" ]; then
  case "$(cat "$MARKER" 2>/dev/null)" in
    0 | 130 | 143) mode=sanity ;;
  esac
fi
log "validation mode: $mode (marker $MARKER: $(cat "$MARKER" 2>/dev/null || echo absent))"

started_at=$(date +%s)
backoff=1
# a Successful this run did not ask for (a stale one, from before a restart) is not trusted
own=0
while :; do
  if [ "$MAX_WAIT" -gt 0 ] && [ $(($(date +%s) - started_at)) -ge "$MAX_WAIT" ]; then
    log "no successful initialization within ${MAX_WAIT}s; giving up"
    exit 1
  fi
  status=$(curl_get /initialization/status 2>/dev/null) || status=unreachable
  case "$status" in
    New)
      log "starting initialization (mode $mode)"
      if curl_get "/initialization/start?mode=$mode" >/dev/null; then
        own=1
      else
        log "start request failed; retrying"
      fi
      sleep 1
      ;;
    Progress)
      own=1
      sleep 1
      ;;
    Successful)
      if [ "$own" = 1 ]; then
        log "initialization successful"
        break
      fi
      log "a successful initialization this start did not ask for: validating again (mode $mode)"
      if curl_get "/initialization/start?mode=$mode" >/dev/null; then
        own=1
      else
        log "start request failed; retrying"
      fi
      sleep 1
      ;;
    Failed)
      log "initialization FAILED: see the backup sidecar's log; retrying in ${backoff}s"
      sleep "$backoff"
      backoff=$((backoff * 2))
      [ "$backoff" -gt "$MAX_BACKOFF" ] && backoff=$MAX_BACKOFF
      ;;
    *)
      log "backup sidecar not answering at $BACKUP_URL ($status); retrying"
      sleep 1
      ;;
  esac
done

tries=0
until curl_get /config "$CONFIG_FILE.tmp"; do
  tries=$((tries + 1))
  if [ "$tries" -ge 5 ]; then
    log "cannot fetch /config from $BACKUP_URL after 5 tries"
    exit 1
  fi
  sleep 2
done
mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"

rm -f "$MARKER"
log "starting $ETCD_BIN --config-file $CONFIG_FILE"
"$ETCD_BIN" --config-file "$CONFIG_FILE" &
child=$!
asked=0
trap 'asked=1; kill -TERM "$child" 2>/dev/null' TERM
trap 'asked=1; kill -INT "$child" 2>/dev/null' INT
# wait returns early when a trapped signal arrives: wait again until etcd is gone
wait "$child"
code=$?
while kill -0 "$child" 2>/dev/null; do
  wait "$child"
  code=$?
done
if [ "$asked" = 1 ]; then
  echo "$code" >"$MARKER"
  log "etcd exited with $code (asked to stop)"
else
  echo "unasked-$code" >"$MARKER"
  log "etcd exited with $code by itself: the next start validates fully"
fi
exit "$code"
