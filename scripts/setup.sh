#!/usr/bin/env bash
# Installs everything moatc needs into one prefix (default /opt/moatc) and reuses what is
# already there at the pinned version. Run as root. Idempotent: a warm run takes seconds.
#
#   PREFIX=/opt/moatc bash scripts/setup.sh [--no-buildkit]
set -euo pipefail

PREFIX=${PREFIX:-${MOATC_PREFIX:-/opt/moatc}}
CONTAINERD_VERSION=v2.4.2
GVISOR_VERSION=v0.0.0-20260527191743-a81fd9dd382e
BUILDKIT_VERSION=v0.34.2
DOCKER_CLI_VERSION=v29.9.3+incompatible # the client the engine is tested with (see step 5)
COMPOSE_VERSION=v5.6.0 # the CLI's compose plugin (step 6); v5.7 needs go 1.26.10
APT_PACKAGES=(runc containernetworking-plugins iptables iproute2 debootstrap busybox-static ca-certificates tini
  zsh fish # zsh, fish: the tests check moatc's completion scripts with them
  rootlesskit slirp4netns uidmap acl) # rootless mode (docs/rootless.md)

here=$(cd "$(dirname "$0")/.." && pwd)
with_buildkit=1
for a in "$@"; do
  case $a in
    --no-buildkit) with_buildkit=0 ;;
    *) echo "setup: unknown argument $a (known: --no-buildkit)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "setup: needs root (it installs Debian packages and writes $PREFIX); try: sudo make setup" >&2
  exit 1
fi
command -v go >/dev/null || { echo "setup: go is not on PATH; install Go 1.26 first" >&2; exit 1; }

log() { printf 'setup: %s\n' "$*" >&2; }
mkdir -p "$PREFIX/bin" "$PREFIX/versions"

# 1. Debian packages: only the missing ones, so a warm run never touches apt.
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
ln -sf "$(command -v runc)" "$PREFIX/bin/runc"
mkdir -p "$PREFIX/lib"
[ -e "$PREFIX/lib/cni" ] || ln -s /usr/lib/cni "$PREFIX/lib/cni"

# Rootless mode: slirp4netns makes its tap device through /dev/net/tun as the user. Debian's
# udev rule makes it 0666; these machines have no udev, so it is 0600 root. Opening it grants
# nothing by itself: a tap device needs CAP_NET_ADMIN in its network namespace. Rootless mode is
# optional, so a machine where this cannot be done still gets the rest.
tun=/dev/net/tun
if [ ! -c "$tun" ]; then
  modprobe tun 2>/dev/null || true
  if { [ -c "$tun" ] || { mkdir -p /dev/net && mknod "$tun" c 10 200; }; } 2>/dev/null && chmod 0666 "$tun"; then
    log "rootless: made $tun (char 10,200) with mode 0666"
  else
    log "rootless: there is no $tun and it cannot be made (modprobe tun; mknod $tun c 10 200): rootless runs will have no network"
  fi
elif [ "$(stat -c %a "$tun")" != 666 ]; then
  was=$(stat -c %A "$tun")
  if chmod 0666 "$tun"; then
    log "rootless: $tun was $was, now $(stat -c %A "$tun") as Debian's udev default (lost at reboot: run make setup again)"
  else
    log "rootless: cannot chmod 0666 $tun: give each rootless user access with setfacl -m u:NAME:rw $tun"
  fi
fi

# current NAME VERSION BIN...: true when every BIN exists and was built at VERSION.
current() {
  local name=$1 version=$2; shift 2
  [ "$(cat "$PREFIX/versions/$name" 2>/dev/null)" = "$version" ] || return 1
  for b in "$@"; do [ -x "$PREFIX/bin/$b" ] || return 1; done
}
stamp() { echo "$2" > "$PREFIX/versions/$1.tmp" && mv "$PREFIX/versions/$1.tmp" "$PREFIX/versions/$1"; }

# 2. containerd v2: daemon, runc shim, ctr.
if ! current containerd "$CONTAINERD_VERSION" containerd containerd-shim-runc-v2 ctr; then
  log "building containerd $CONTAINERD_VERSION (about 2 minutes cold)"
  GOBIN="$PREFIX/bin" CGO_ENABLED=0 go install -tags no_btrfs \
    "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
  stamp containerd "$CONTAINERD_VERSION"
fi

# 3. gVisor: runsc and moatc's own io.containerd.runsc.v1 shim (shim/ in this repo; see
# docs/sandboxing.md for why it is not the stock one).
if ! current runsc "$GVISOR_VERSION" runsc; then
  log "building runsc $GVISOR_VERSION (about 1 minute cold)"
  GOBIN="$PREFIX/bin" CGO_ENABLED=0 go install "gvisor.dev/gvisor/runsc@$GVISOR_VERSION"
  stamp runsc "$GVISOR_VERSION"
fi
if [ -f "$here/shim/go.mod" ]; then
  shim_version="$GVISOR_VERSION+$(cat "$here"/shim/go.sum "$here"/shim/*.go | sha256sum | cut -c1-12)"
  if ! current shim "$shim_version" containerd-shim-runsc-v1; then
    log "building containerd-shim-runsc-v1 (moatc's shim on gVisor $GVISOR_VERSION)"
    (cd "$here/shim" && CGO_ENABLED=0 go build -o "$PREFIX/bin/containerd-shim-runsc-v1.tmp" . &&
      mv "$PREFIX/bin/containerd-shim-runsc-v1.tmp" "$PREFIX/bin/containerd-shim-runsc-v1")
    stamp shim "$shim_version"
  fi
fi

# 4. BuildKit: buildkitd and buildctl. `go install mod@v` is refused (the module's go.mod has
# exclude directives), so build inside a writable copy of the downloaded module.
if [ "$with_buildkit" = 1 ] && ! current buildkit "$BUILDKIT_VERSION" buildkitd buildctl; then
  log "building buildkitd $BUILDKIT_VERSION (about 2 minutes cold)"
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/moby/buildkit@$BUILDKIT_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { log "could not download github.com/moby/buildkit@$BUILDKIT_VERSION"; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$dir/." "$work/" && chmod -R u+w "$work"
  (cd "$work" && CGO_ENABLED=0 go build -o "$PREFIX/bin/" ./cmd/buildkitd ./cmd/buildctl)
  stamp buildkit "$BUILDKIT_VERSION"
fi

# 5. The Docker CLI, the client the engine (issue 10) is tested with; runs' images get their own.
# Its module has no go.mod: it builds from its vendor.mod, with swarmkit v2.1.3 (not served by
# the module proxy) replaced by v2.0.0 (only its api packages are used). See
# docs/research/engine-api.md.
if ! current docker-cli "$DOCKER_CLI_VERSION" docker; then
  log "building the Docker CLI $DOCKER_CLI_VERSION (about 2 minutes cold)"
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/docker/cli@$DOCKER_CLI_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { log "could not download github.com/docker/cli@$DOCKER_CLI_VERSION"; exit 1; }
  cli_work=$(mktemp -d)
  cp -r "$dir/." "$cli_work/" && chmod -R u+w "$cli_work" && rm -rf "$cli_work/vendor"
  cp "$cli_work/vendor.mod" "$cli_work/go.mod" && cp "$cli_work/vendor.sum" "$cli_work/go.sum"
  v=${DOCKER_CLI_VERSION#v}; v=${v%+incompatible}
  (cd "$cli_work" && go mod edit -replace github.com/moby/swarmkit/v2=github.com/moby/swarmkit/v2@v2.0.0 &&
    CGO_ENABLED=0 go build -mod=mod -trimpath \
      -ldflags "-X github.com/docker/cli/cli/version.Version=$v -X github.com/docker/cli/cli/version.GitCommit=modproxy" \
      -o "$PREFIX/bin/docker.tmp" ./cmd/docker) || { rm -rf "$cli_work"; exit 1; }
  rm -rf "$cli_work"
  mv "$PREFIX/bin/docker.tmp" "$PREFIX/bin/docker"
  stamp docker-cli "$DOCKER_CLI_VERSION"
fi

# 6. The compose plugin, in $PREFIX/lib/docker/cli-plugins, which is not one of the CLI's own
# plugin directories: a client finds it through cliPluginsExtraDirs in its config.json (the
# tests write one). `go install` is refused (exclude directives), so build inside a copy.
if ! current compose "$COMPOSE_VERSION" || [ ! -x "$PREFIX/lib/docker/cli-plugins/docker-compose" ]; then
  log "building the compose plugin $COMPOSE_VERSION (about 1 minute cold)"
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$dir" ] || { log "could not download github.com/docker/compose/v5@$COMPOSE_VERSION"; exit 1; }
  compose_work=$(mktemp -d)
  mkdir -p "$PREFIX/lib/docker/cli-plugins"
  cp -r "$dir/." "$compose_work/" && chmod -R u+w "$compose_work"
  (cd "$compose_work" && CGO_ENABLED=0 go build -trimpath \
      -ldflags "-w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
      -o "$PREFIX/lib/docker/cli-plugins/docker-compose.tmp" ./cmd) || { rm -rf "$compose_work"; exit 1; }
  rm -rf "$compose_work"
  mv "$PREFIX/lib/docker/cli-plugins/docker-compose.tmp" "$PREFIX/lib/docker/cli-plugins/docker-compose"
  stamp compose "$COMPOSE_VERSION"
fi

log "ready in $PREFIX ($(ls "$PREFIX/bin" | tr '\n' ' '))"
log "for rootless use, prepare each user once: make rootless-user USER=name"
