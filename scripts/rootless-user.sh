#!/usr/bin/env bash
# Prepares one user for rootless moatc, then runs `moatc doctor` as that user to show the checks.
# Run as root. Idempotent: for a user who is ready it changes nothing.
#
#   bash scripts/rootless-user.sh [--create] USER
#
# --create makes the user (useradd -m) when it does not exist. Each of /etc/subuid and
# /etc/subgid gets a range of 65536 ids for the user unless it has that many already, placed
# after every range in the file (as Debian's useradd does). /dev/net/tun is `make setup`'s job.
# MOATC names the moatc binary to run doctor with (default: this tree's bin/moatc, else
# $PREFIX/bin/moatc).
set -euo pipefail

usage() { echo "usage: $0 [--create] USER" >&2; }
log() { printf 'rootless-user: %s\n' "$*" >&2; }

create=0 name=
for a in "$@"; do
  case $a in
    --create) create=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) log "unknown option $a"; usage; exit 2 ;;
    *) [ -z "$name" ] || { log "one USER only (got $name and $a)"; exit 2; }; name=$a ;;
  esac
done
[ -n "$name" ] || { usage; exit 2; }
if [ "$(id -u)" != 0 ]; then
  log "needs root (it edits /etc/subuid and /etc/subgid); try: sudo make rootless-user USER=$name"
  exit 1
fi

if ! id -u "$name" >/dev/null 2>&1; then
  if [ "$create" != 1 ]; then
    log "there is no user $name: add --create (make rootless-user USER=$name CREATE=1) to make it"
    exit 1
  fi
  useradd -m -s /bin/bash "$name"
  log "created user $name (uid $(id -u "$name"), home $(getent passwd "$name" | cut -d: -f6))"
fi
uid=$(id -u "$name")
if [ "$uid" = 0 ]; then
  log "$name is root: rootless mode is for other users"
  exit 2
fi

# ids FILE: how many ids FILE gives the user (by name or uid); then the first free id.
ids() {
  local owner start count rest have=0 end=100000
  [ -f "$1" ] || { echo "0 $end"; return; }
  while IFS=: read -r owner start count rest; do
    owner=${owner#"${owner%%[![:space:]]*}"}
    [[ -n $owner && $owner != \#* && -z $rest && $start =~ ^[0-9]+$ && $count =~ ^[0-9]+$ ]] || continue
    if [ "$owner" = "$name" ] || [ "$owner" = "$uid" ]; then have=$((have + count)); fi
    if [ $((start + count)) -gt "$end" ]; then end=$((start + count)); fi
  done <"$1"
  echo "$have $end"
}

for kind in uid gid; do
  file=/etc/sub$kind
  read -r have start < <(ids "$file")
  if [ "$have" -ge 65536 ]; then
    log "$file: $name has $have ids already"
    continue
  fi
  usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$name"
  log "$file: added $start-$((start + 65535)) for $name (it had $have ids)"
done

# The checks, as the user, with the user's own login environment.
moatc=${MOATC:-}
if [ -z "$moatc" ]; then
  for m in "$(cd "$(dirname "$0")/.." && pwd)/bin/moatc" "${PREFIX:-${MOATC_PREFIX:-/opt/moatc}}/bin/moatc"; do
    if [ -x "$m" ]; then moatc=$m; break; fi
  done
fi
if [ -z "$moatc" ]; then
  log "no moatc binary to check with (make build, or set MOATC); as $name, run: moatc doctor"
  exit 0
fi
if ! su -s /bin/sh "$name" -c "test -x '$moatc'" 2>/dev/null; then
  # The source tree is often not the user's to read (e.g. under /root).
  tmp=$(mktemp -d /tmp/moatc-doctor.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  install -m 0755 "$moatc" "$tmp/moatc"
  chmod 0755 "$tmp"
  moatc=$tmp/moatc
fi
log "checks as $name: $moatc doctor"
# doctor starts the user's rootless containerd to probe the runtimes; a stack that was not
# running before is stopped again, so preparing a user leaves nothing running.
was_running=0
su -l -s /bin/sh "$name" -c "'$moatc' system status --json" 2>/dev/null | grep -q '"state": "running"' && was_running=1
report=$(su -l -s /bin/sh "$name" -c "'$moatc' doctor" 2>&1) || true
printf '%s\n' "$report"
if [ "$was_running" = 0 ]; then
  su -l -s /bin/sh "$name" -c "'$moatc' system stop --force" >/dev/null 2>&1 || true
fi
# Only the rootless checks are the admin's: a new user's empty image store (the probes) is not.
if printf '%s\n' "$report" | grep -q '^FAIL  rootless:'; then
  log "some rootless checks failed for $name: each FAIL line above says what to run"
  exit 1
fi
log "$name is ready for rootless moatc"
