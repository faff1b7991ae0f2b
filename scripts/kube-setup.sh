#!/usr/bin/env bash
# Installs what the Kubernetes end-to-end tests (e2e/kube) need into the prefix (default
# /opt/moatc): Debian's etcd-server, and kube-apiserver, kubelet, kube-scheduler,
# kube-controller-manager and the pause binary built from the Go module proxy at a pinned
# version into $PREFIX/kube/bin. Run as root, after scripts/setup.sh. Idempotent: a warm run takes seconds. See
# /work/shared/notes/kubernetes.md for the measured facts behind it.
#
#   PREFIX=/opt/moatc bash scripts/kube-setup.sh
set -euo pipefail

PREFIX=${PREFIX:-${MOATC_PREFIX:-/opt/moatc}}
KUBE_VERSION=v1.37.2
STAGING_VERSION=v0.37.2 # k8s.io/* staging modules released with $KUBE_VERSION
KUBE_BINS=(kube-apiserver kubelet kube-scheduler kube-controller-manager)
# The cluster's NetworkPolicy engine: kube-router's firewall alone, as a host process. v2.1.0 is
# the only version the Go module proxy serves; its reported advisory (GHSA-phqm-jgc3-qf8g) is
# in the service proxy, which the tests never run.
KUBE_ROUTER_VERSION=v2.1.0

if [ "$(id -u)" != 0 ]; then
  echo "kube-setup: needs root (it installs a Debian package and writes $PREFIX); try: sudo make kube-setup" >&2
  exit 1
fi
command -v go >/dev/null || { echo "kube-setup: go is not on PATH; install Go 1.26 first" >&2; exit 1; }

log() { printf 'kube-setup: %s\n' "$*" >&2; }
bin=$PREFIX/kube/bin
mkdir -p "$bin" "$PREFIX/versions"

# 1. etcd from Debian. The tests start their own etcd: the packaged service must not run. On
# machines whose /usr/sbin/policy-rc.d does not already forbid it, one is put there for the
# install only.
if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed"; then
  log "installing Debian package etcd-server"
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 0755 "$policy" && made_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends etcd-server >/dev/null ||
    { [ "$made_policy" = 0 ] || rm -f "$policy"; exit 1; }
  [ "$made_policy" = 0 ] || rm -f "$policy"
  # Should a service manager have started it anyway, stop it and keep it from coming back.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  else
    service etcd stop >/dev/null 2>&1 || true
    update-rc.d etcd disable >/dev/null 2>&1 || true
  fi
fi
# ipset, which kube-router runs to keep its address sets.
if ! command -v ipset >/dev/null; then
  log "installing Debian package ipset"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ipset >/dev/null
fi

# current: true when every binary exists and was built at $KUBE_VERSION.
current() {
  [ "$(cat "$PREFIX/versions/kubernetes" 2>/dev/null)" = "$KUBE_VERSION" ] || return 1
  for b in "${KUBE_BINS[@]}" pause; do [ -x "$bin/$b" ] || return 1; done
}
stamp() { echo "$KUBE_VERSION" > "$PREFIX/versions/kubernetes.tmp" && mv "$PREFIX/versions/kubernetes.tmp" "$PREFIX/versions/kubernetes"; }

router_current() {
  [ "$(cat "$PREFIX/versions/kube-router" 2>/dev/null)" = "$KUBE_ROUTER_VERSION" ] && [ -x "$bin/kube-router" ]
}

if current && router_current; then
  log "ready in $bin ($(ls "$bin" | tr '\n' ' '))"
  exit 0
fi
work=$(mktemp -d /tmp/kube-setup.XXXXXX)
trap 'rm -rf "$work"' EXIT

# 2. kube-router, from a small tool module that requires it (its go.mod has no replace
# directives). About 7 minutes cold on 2 cores.
if ! router_current; then
  log "building kube-router $KUBE_ROUTER_VERSION"
  mkdir -p "$work/router"
  printf 'module moatc.local/kube-router\n\ngo 1.26\n\nrequire github.com/cloudnativelabs/kube-router/v2 %s\n' "$KUBE_ROUTER_VERSION" > "$work/router/go.mod"
  (cd "$work/router" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$work/router/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router)
  mv "$work/router/kube-router" "$bin/kube-router"
  echo "$KUBE_ROUTER_VERSION" > "$PREFIX/versions/kube-router.tmp" && mv "$PREFIX/versions/kube-router.tmp" "$PREFIX/versions/kube-router"
fi
if current; then
  log "ready in $bin ($(ls "$bin" | tr '\n' ' '))"
  exit 0
fi

# 3. The Kubernetes binaries. k8s.io/kubernetes's go.mod replaces the k8s.io/* staging modules
# with ./staging paths its module zip does not hold, so it cannot be built as a main module nor
# with `go install mod@v`. A small tool module requires it and replaces each of those staging
# modules with its released version instead; the list comes from the module's own go.mod.
start=$(date +%s)
log "building ${KUBE_BINS[*]} $KUBE_VERSION (cold on 2 cores: 24 minutes measured while setup.sh built in parallel; about 12 alone)"
info=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION")
gomod=$(printf '%s\n' "$info" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
zipdir=$(printf '%s\n' "$info" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -f "$gomod" ] && [ -d "$zipdir" ] || { log "could not download k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod" | sort -u)
[ -n "$staging" ] || { log "found no staging replacements in $gomod"; exit 1; }
go_version=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")
{
  echo "module moatc.local/kube-tools"
  echo
  echo "go $go_version"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  for m in $staging; do echo "replace $m => $m $STAGING_VERSION"; done
} > "$work/go.mod"

# Without the version variables the binaries say v0.0.0-master, which clients cannot parse.
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
pkgs=()
for b in "${KUBE_BINS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
# One go build for all of them: they share most of their packages.
mkdir -p "$work/out"
(cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$work/out/" "${pkgs[@]}")
for b in "${KUBE_BINS[@]}"; do mv "$work/out/$b" "$bin/$b"; done

# 4. The pod sandbox's pause process, from the same module zip. Static: it is the only file of
# the sandbox image the tests make.
gcc -static -O2 -o "$work/pause" "$zipdir/build/pause/linux/pause.c"
strip "$work/pause" 2>/dev/null || true
mv "$work/pause" "$bin/pause"

stamp
log "built in $(($(date +%s) - start)) s: $(ls "$bin" | tr '\n' ' ')"
