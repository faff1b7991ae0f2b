#!/usr/bin/env bash
# Makes the two base images locally (no registry needed) and imports them into moatc's store:
#   docker.io/library/busybox:latest        a busybox-static rootfs
#   docker.io/library/debian:bookworm-slim  debootstrap --variant=minbase bookworm
# The OCI tars are cached in $PREFIX/images, so only the first run on a machine pays for
# debootstrap (about a minute). Both images carry the label moatc.built-locally=true.
#
#   MOATC=path/to/moatc PREFIX=/opt/moatc bash scripts/base-images.sh [--tars-only]
#
# --tars-only makes the cached tars and imports nothing (no containerd is started); the test
# suite uses it and imports them into daemons of its own.
set -euo pipefail
tars_only=0
[ "${1:-}" = "--tars-only" ] && tars_only=1
PREFIX=${PREFIX:-${MOATC_PREFIX:-/opt/moatc}}
MOATC=${MOATC:-moatc}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache="$PREFIX/images"
mkdir -p "$cache"
log() { printf 'base-images: %s\n' "$*" >&2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ ! -s "$cache/busybox.oci.tar" ]; then
  log "making busybox from $(command -v busybox)"
  r="$work/busybox"
  mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/workspace" "$r/proc" "$r/sys" "$r/dev"
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
  "$MOATC" image pack --name docker.io/library/busybox:latest -o "$cache/busybox.oci.tar" "$r"
fi

if [ ! -s "$cache/debian-bookworm-slim.oci.tar" ]; then
  log "making debian:bookworm-slim with debootstrap from $MIRROR (about a minute)"
  r="$work/debian"
  debootstrap --variant=minbase bookworm "$r" "$MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
  mkdir -p "$r/workspace"
  "$MOATC" image pack --name docker.io/library/debian:bookworm-slim -o "$cache/debian-bookworm-slim.oci.tar" "$r"
fi

[ "$tars_only" = 1 ] && { log "tars ready in $cache"; exit 0; }
have=$("$MOATC" image ls --json)
for f in busybox debian-bookworm-slim; do
  case $f in busybox) n=docker.io/library/busybox:latest ;; *) n=docker.io/library/debian:bookworm-slim ;; esac
  if ! grep -q "\"$n\"" <<<"$have"; then
    log "importing $n"
    "$MOATC" image import "$cache/$f.oci.tar" >/dev/null
  fi
done
log "ready: busybox:latest, debian:bookworm-slim"
