#!/usr/bin/env bash
# The whole suite, as `make test` runs it once setup, vet and build are done. Run as root.
#
# The Kubernetes binaries of e2e/kube take about 12 minutes to compile on a machine that has
# never built them. They are built in the background, at the lowest CPU priority, while every
# other package is tested: the end-to-end tests mostly wait on containers, and the build takes
# the CPU they leave idle. e2e/kube runs last, once the build is done. On a machine that has
# them, kube-setup.sh returns in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}

log=$(mktemp /tmp/moatc-kube-setup.XXXXXX)
set -m # the background build gets its own process group, which an interrupt takes down whole
nice -n 19 bash scripts/kube-setup.sh >"$log" 2>&1 &
kube=$!
set +m
trap 'kill -- -"$kube" 2>/dev/null; rm -f "$log"; exit 130' INT TERM

rc=0
mapfile -t pkgs < <($GO list ./... | grep -v '/e2e/kube$')
$GO test -count=1 -p 1 -timeout 55m "${pkgs[@]}" || rc=1

if [ -n "$(jobs -r)" ]; then
  echo "test: waiting for the Kubernetes binaries (scripts/kube-setup.sh) before e2e/kube" >&2
fi
wait "$kube"
krc=$?
cat "$log" >&2
rm -f "$log"
if [ "$krc" != 0 ]; then
  echo "test: scripts/kube-setup.sh failed (exit $krc), so e2e/kube cannot run; its output is above" >&2
  rc=1
else
  $GO test -count=1 -timeout 15m ./e2e/kube || rc=1
fi

$GO test -race -count=1 ./proxy ./grant ./policy ./run ./state || rc=1
exit "$rc"
