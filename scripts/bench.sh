#!/usr/bin/env bash
# make bench: start latency of moatc against what a user would otherwise type, measured in the
# same run, on the same machine, same busybox image, warm. Prints medians and ratios.
# Not part of CI: these machines are shared and noisy, so targets live here, not in tests.
#
# Rows are added with `row NAME CMD...` and compared with `ratio A B`; later features add rows.
set -euo pipefail
PREFIX=${PREFIX:-${MOATC_PREFIX:-/opt/moatc}}
RUNS=${RUNS:-25}
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$PREFIX/bin:$PATH"
export MOATC_HOME=${BENCH_HOME:-/tmp/moatc-bench}
# Every row is cold unless it says otherwise: a home with a warm pool would fill it in the
# background and disturb the other rows. warm_rows turns it back on for its own commands.
export MOATC_WARM_POOL=0
MOATC=${BENCH_MOATC:-$PREFIX/bin/moatc}
mkdir -p "$MOATC_HOME"
ws=$(mktemp -d)
trap 'cleanup' EXIT
declare -A median

cleanup() {
  [ -n "${dockerd_pid:-}" ] && kill "$dockerd_pid" 2>/dev/null && wait "$dockerd_pid" 2>/dev/null
  rootless_cleanup
  env -u MOATC_WARM_POOL "$MOATC" pool drain >/dev/null 2>&1 || true
  ip link del moatcbench0 2>/dev/null || true
  "$MOATC" clean >/dev/null 2>&1 || true
  "$MOATC" system stop --force >/dev/null 2>&1 || true
  rm -rf "$ws"
}

# row NAME CMD...: run CMD 3 times to warm up, then RUNS times; record the median in seconds.
row() {
  local name=$1; shift
  local times=()
  for _ in 1 2 3; do "$@" >/dev/null 2>&1 || { echo "bench: '$*' failed:" >&2; "$@" >&2 || true; exit 1; }; done
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    times+=($(( t1 - t0 )))
  done
  median[$name]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.4f", a[int((NR+1)/2)]/1e9}')
  printf '%-46s %8ss\n' "$name" "${median[$name]}"
}

# netcost A B LABEL: A's median minus B's, in ms.
netcost() {
  awk -v a="${median[$1]}" -v b="${median[$2]}" -v n="$3" 'BEGIN {printf "  network adds %6.1f ms  (%s)\n", (a-b)*1000, n}'
}

# startrow NAME CMD...: CMD prints the time (date +%s%N) as its first act; the median of that
# minus the time CMD was launched is the start latency: what the user waits for before the
# workload runs, without the teardown after it ends.
startrow() {
  local name=$1; shift
  local times=()
  for _ in 1 2 3; do "$@" >/dev/null 2>&1 || { echo "bench: '$*' failed" >&2; exit 1; }; done
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(date +%s%N); t1=$("$@" 2>/dev/null)
    times+=($(( t1 - t0 )))
  done
  median[$name]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.4f", a[int((NR+1)/2)]/1e9}')
  printf '%-46s %8ss\n' "$name" "${median[$name]}"
}

# ratio A B: how A compares with B (A's median / B's).
ratio() {
  awk -v a="${median[$1]}" -v b="${median[$2]}" -v n1="$1" -v n2="$2" \
    'BEGIN {printf "  ratio %-36s %5.2fx  (%s / %s)\n", "", a/b, n1, n2}'
}

# goal A B MAX: ratio A B, with the goal (A/B <= MAX) and whether this run met it.
goal() {
  awk -v a="${median[$1]}" -v b="${median[$2]}" -v n1="$1" -v n2="$2" -v g="$3" \
    'BEGIN {r = a/b; printf "  ratio %-36s %5.2fx  (%s / %s; goal <= %.2fx: %s)\n", "", r, n1, n2, g, (r <= g ? "met" : "NOT met")}'
}

# The warm pool (issue 14): a run that takes a member (a gVisor sandbox booted ahead, or a
# network made ahead for runc) against the same run with --cold, against `ctr run --rm` of the
# same image with the same shim, and (in the Docker section) against Docker's `docker run
# --rm`. Before each iteration, untimed: `moatc pool fill` (waits for a fill that runs) and a
# pause, so a member is ready and no fill competes with the timed run; cold rows get the same,
# so both run beside the same idle members. BENCH_ONLY=warm runs only these rows.
wp() { env -u MOATC_WARM_POOL "$@"; }
warm_prep() { wp "$MOATC" pool fill -q >/dev/null; sleep 0.5; }

# warmrow NAME PREP CMD...: row, with PREP (a command) run untimed before each iteration.
warmrow() {
  local name=$1 prep=$2; shift 2
  local times=()
  for _ in 1 2 3; do $prep; "$@" >/dev/null 2>&1 || { echo "bench: '$*' failed:" >&2; $prep; "$@" >&2 || true; exit 1; }; done
  for _ in $(seq "$RUNS"); do
    local t0 t1
    $prep
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    times+=($(( t1 - t0 )))
  done
  median[$name]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.4f", a[int((NR+1)/2)]/1e9}')
  printf '%-46s %8ss\n' "$name" "${median[$name]}"
}

# warmstartrow NAME PREP CMD...: startrow, with PREP run untimed before each iteration.
warmstartrow() {
  local name=$1 prep=$2; shift 2
  local times=()
  for _ in 1 2 3; do $prep; "$@" >/dev/null 2>&1 || { echo "bench: '$*' failed" >&2; exit 1; }; done
  for _ in $(seq "$RUNS"); do
    local t0 t1
    $prep
    t0=$(date +%s%N); t1=$("$@" 2>/dev/null)
    times+=($(( t1 - t0 )))
  done
  median[$name]=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.4f", a[int((NR+1)/2)]/1e9}')
  printf '%-46s %8ss\n' "$name" "${median[$name]}"
}

# pool_memory WHEN: the mean idle memory (PSS, measured when each was made) of the ready
# gVisor members, from `moatc pool status --json`.
pool_memory() {
  wp "$MOATC" pool status --json | jq -r --arg when "$1" '
    [.members[] | select(.class.runtime == "gvisor" and .state == "ready" and (.memory_kb // 0) > 0) | .memory_kb] as $m
    | if ($m | length) == 0 then "  idle memory per gVisor member (\($when)): none measured"
      else "  idle memory per gVisor member (\($when)): \(($m | add / length / 1024 * 10 | round) / 10) MB PSS, mean of \($m | length) (\([$m[] | (. / 1024 | round | tostring)] | join(", ")) MB)" end'
}

warm_rows() {
  local rt flag t0 t1
  echo
  echo "== warm pool: a run that takes a member against a cold one (busybox, networked)"
  wp "$MOATC" pool drain >/dev/null
  t0=$(date +%s%N); wp "$MOATC" pool fill -q; t1=$(date +%s%N)
  awk -v d=$((t1 - t0)) -v w="$(wp "$MOATC" system status --json | jq -c '.pool.want // .pool')" \
    'BEGIN {printf "  filling an empty pool (%s members) took %.2f s\n", w, d/1e9}'
  pool_memory "after an empty pool's fill"
  for rt in gvisor runc; do
    flag=; [ "$rt" = runc ] && flag=--no-sandbox
    warm_prep
    wp "$MOATC" run $flag -n "bench-warm-check-$rt" --image busybox "$ws" -- true >/dev/null
    if "$MOATC" status --json "bench-warm-check-$rt" | grep -q '"warm": true'; then
      echo "  check: a $rt run took a pool member"
    else
      echo "bench: a $rt run did not take a pool member (is moatc-pause installed? see moatc pool status):" >&2
      wp "$MOATC" pool status >&2 || true
      exit 1
    fi
    warmrow "warm: moatc run -- true, networked ($rt)" warm_prep wp "$MOATC" run $flag --image busybox "$ws" -- true
    warmrow "cold: moatc run --cold -- true, networked ($rt)" warm_prep wp "$MOATC" run $flag --cold --image busybox "$ws" -- true
    ratio "warm: moatc run -- true, networked ($rt)" "cold: moatc run --cold -- true, networked ($rt)"
    warmstartrow "warm: start, $rt, networked" warm_prep wp "$MOATC" run $flag --image debian:bookworm-slim "$ws" -- date +%s%N
    warmstartrow "cold: start, $rt, networked" warm_prep wp "$MOATC" run $flag --cold --image debian:bookworm-slim "$ws" -- date +%s%N
    ratio "warm: start, $rt, networked" "cold: start, $rt, networked"
  done
  echo
  echo "== warm pool against containerd's own client, same image and shim (ctr: no network)"
  if [ -z "${median["ctr run --rm (runc)"]:-}" ]; then
    row "ctr run --rm (runc)" ctr -a "$sock" -n moatc run --rm "$img" bench-ctr true
  fi
  if [ -z "${median["ctr run --rm (runsc shim, same config)"]:-}" ]; then
    row "ctr run --rm (runsc shim, same config)" ctr -a "$sock" -n moatc run --rm --runtime io.containerd.runsc.v1 \
      --runtime-config-path "$cfg" --annotation io.kubernetes.cri.container-type=sandbox "$img" bench-ctr-runsc true
  fi
  goal "warm: moatc run -- true, networked (gvisor)" "ctr run --rm (runsc shim, same config)" 0.60
  ratio "cold: moatc run --cold -- true, networked (gvisor)" "ctr run --rm (runsc shim, same config)"
  ratio "warm: moatc run -- true, networked (runc)" "ctr run --rm (runc)"
  ratio "cold: moatc run --cold -- true, networked (runc)" "ctr run --rm (runc)"
  pool_memory "after the runs"
  echo "  $(wp "$MOATC" pool drain)"
}

# docker_up installs (when missing) and starts Docker Engine for the comparison.
docker_up() {
  if ! command -v dockerd >/dev/null; then
    echo "bench: installing Debian's docker.io for the comparison" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  droot="$MOATC_HOME/docker"
  mkdir -p "$droot"
  printf '{"runtimes":{"runsc":{"path":"%s","runtimeArgs":["--platform=systrap"]}}}\n' "$PREFIX/bin/runsc" > "$droot/daemon.json"
  # A bridge of its own, so networked runs need no change to the host's docker0 or iptables.
  ip link add moatcbench0 type bridge 2>/dev/null || true
  ip addr add 10.254.77.1/24 dev moatcbench0 2>/dev/null || true
  ip link set moatcbench0 up
  dockerd --data-root "$droot/data" --exec-root "$droot/exec" --pidfile "$droot/docker.pid" \
    -H "unix://$droot/docker.sock" --config-file "$droot/daemon.json" --bridge moatcbench0 --iptables=false \
    --containerd-namespace moatc-bench-docker >"$droot/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$droot/docker.sock"
  for _ in $(seq 100); do docker version >/dev/null 2>&1 && break; sleep 0.2; done
  # The same busybox rootfs: the layer of the cached OCI tar.
  layer=$(tar -tvf "$PREFIX/images/busybox.oci.tar" | sort -k3 -n | tail -1 | awk '{print $6}')
  tar -xOf "$PREFIX/images/busybox.oci.tar" "$layer" | docker import - moatc-bench/busybox >/dev/null
}

# docker_warm_goals: Docker's networked runs, and the warm pool's goals against them.
docker_warm_goals() {
  if [ -z "${median["docker run --rm (runc, bridge)"]:-}" ]; then
    row "docker run --rm (runc, bridge)" docker run --rm moatc-bench/busybox true
    row "docker run --rm --runtime=runsc (bridge)" docker run --rm --runtime=runsc moatc-bench/busybox true
  fi
  if [ -n "${median["warm: moatc run -- true, networked (gvisor)"]:-}" ]; then
    echo
    echo "== warm pool against Docker Engine, networked"
    goal "warm: moatc run -- true, networked (runc)" "docker run --rm (runc, bridge)" 0.50
    goal "warm: moatc run -- true, networked (gvisor)" "docker run --rm --runtime=runsc (bridge)" 0.50
  fi
}

# Rootless against rootful: the same moatc, image and workspace, measured side by side in this
# run; rootless is moatc run by BENCH_USER (made like the e2e tests' user when missing), with
# a home of its own, on the rootless containerd it starts itself. Both go through setpriv, so
# they pay the same for it. BENCH_ONLY=rootless runs only these rows.
rl_user=${BENCH_USER:-moatcrl}
rl_home= rl_acl=

rootless_cleanup() {
  if [ -n "$rl_home" ]; then
    as_user "$rl_home/moatc" clean >/dev/null 2>&1 || true
    as_user "$rl_home/moatc" system stop --force >/dev/null 2>&1 || true
    rm -rf "$rl_home"
  fi
  if [ -n "$rl_acl" ]; then setfacl -x "u:$rl_user" /dev/net/tun; fi
  return 0
}

# as_user CMD...: CMD as the rootless user, in its moatc home.
as_user() {
  setpriv --reuid="$rl_uid" --regid="$rl_gid" --clear-groups \
    env -i HOME="$rl_hdir" USER="$rl_user" PATH=/usr/local/bin:/usr/bin:/bin MOATC_HOME="$rl_home" MOATC_PREFIX="$PREFIX" "$@"
}

# as_root CMD...: CMD as root with the bench's home, through setpriv as as_user is.
as_root() {
  setpriv --reuid=0 --regid=0 --keep-groups env MOATC_HOME="$MOATC_HOME" MOATC_PREFIX="$PREFIX" PATH="$PATH" "$@"
}

rootless_rows() {
  if ! id -u "$rl_user" >/dev/null 2>&1; then
    bash "$here/scripts/rootless-user.sh" --create "$rl_user" >/dev/null
  fi
  rl_uid=$(id -u "$rl_user") rl_gid=$(id -g "$rl_user") rl_hdir=$(getent passwd "$rl_user" | cut -d: -f6)
  if ! setpriv --reuid="$rl_uid" --regid="$rl_gid" --clear-groups sh -c 'exec 3<>/dev/net/tun' 2>/dev/null; then
    # `make setup` makes the device 0666; an ACL for the user does as well, for this run only.
    setfacl -m "u:$rl_user:rw" /dev/net/tun && rl_acl=1
  fi
  rl_home=$(mktemp -d /tmp/moatc-bench-rl-XXXX)
  install -m 0755 "$MOATC" "$rl_home/moatc"
  for i in busybox debian-bookworm-slim; do install -m 0644 "$PREFIX/images/$i.oci.tar" "$rl_home/$i.oci.tar"; done
  mkdir "$rl_home/ws"
  chown -R "$rl_uid:$rl_gid" "$rl_home"
  chmod 0755 "$rl_home"
  for i in busybox debian-bookworm-slim; do as_user "$rl_home/moatc" image import "$rl_home/$i.oci.tar" >/dev/null; done
  local rws="$rl_home/ws" rl="$rl_home/moatc"
  echo
  echo "== rootless against rootful: warm, the same moatc, image and workspace"
  row "rootful: run --no-sandbox -- true" as_root "$MOATC" run --no-sandbox --network none --image busybox "$rws" -- true
  row "rootless: run --no-sandbox -- true" as_user "$rl" run --no-sandbox --network none --image busybox "$rws" -- true
  ratio "rootless: run --no-sandbox -- true" "rootful: run --no-sandbox -- true"
  row "rootful: run -- true (gvisor)" as_root "$MOATC" run --network none --image busybox "$rws" -- true
  row "rootless: run -- true (gvisor)" as_user "$rl" run --network none --image busybox "$rws" -- true
  ratio "rootless: run -- true (gvisor)" "rootful: run -- true (gvisor)"
  for rt in runc gvisor; do
    flag=; [ "$rt" = runc ] && flag=--no-sandbox
    for net in none default; do
      startrow "rootful: start, $rt, network $net" as_root "$MOATC" run $flag --network $net --image debian:bookworm-slim "$rws" -- date +%s%N
      startrow "rootless: start, $rt, network $net" as_user "$rl" run $flag --network $net --image debian:bookworm-slim "$rws" -- date +%s%N
      ratio "rootless: start, $rt, network $net" "rootful: start, $rt, network $net"
    done
  done
  as_root "$MOATC" clean >/dev/null
}

# The Docker Engine API (issue 10): a container through the engine's socket against `moatc run`
# of the same image and command, per runtime (goal: within 1.5x). BENCH_ONLY=engine runs only
# these rows.
engine_rows() {
  local rt flag ns esock epid dind_ws
  dind_ws=$(mktemp -d)
  printf 'dependencies:\n  - docker:dind\n' > "$dind_ws/moatc.yaml"
  "$MOATC" run --no-sandbox "$dind_ws" -- true >/dev/null # builds its image once
  for rt in runc gvisor; do
    flag=; [ "$rt" = runc ] && flag=--no-sandbox
    ns=moatc-bench-engine-$rt esock="$MOATC_HOME/bench-engine-$rt.sock"
    "$MOATC" _engine --socket "$esock" --namespace "$ns" --image busybox --ephemeral $flag 2>"$MOATC_HOME/bench-engine-$rt.log" &
    epid=$!
    for _ in $(seq 100); do DOCKER_HOST=unix://$esock "$PREFIX/bin/docker" version >/dev/null 2>&1 && break; sleep 0.1; done
    echo
    echo "== Docker Engine API ($rt): docker run --rm through moatc's socket"
    row "moatc run -- true, networked ($rt)" "$MOATC" run $flag --image busybox "$ws" -- true
    row "docker run --rm true, engine ($rt)" env DOCKER_HOST=unix://$esock "$PREFIX/bin/docker" run --rm busybox true
    ratio "docker run --rm true, engine ($rt)" "moatc run -- true, networked ($rt)"
    kill "$epid"; wait "$epid" || true
    # Readiness: from `moatc run` to the workload's first act, and to its first successful
    # `docker version`, in a docker:dind run; against a plain run's start (goal: the socket
    # adds under 50 ms; a dind daemon booting in a privileged container takes 5-10 s).
    startrow "start, plain run ($rt)" "$MOATC" run $flag --image debian:bookworm-slim "$ws" -- date +%s%N
    startrow "start, dind run, workload ($rt)" "$MOATC" run $flag "$dind_ws" -- date +%s%N
    startrow "start, dind run, docker answers ($rt)" "$MOATC" run $flag "$dind_ws" -- \
      sh -c 'until docker version >/dev/null 2>&1; do :; done; date +%s%N'
    ratio "start, dind run, docker answers ($rt)" "start, plain run ($rt)"
    awk -v a="${median["start, dind run, docker answers ($rt)"]}" -v b="${median["start, dind run, workload ($rt)"]}" \
      'BEGIN {printf "  the socket answers %6.1f ms after the workload starts (docker version itself included)\n", (a-b)*1000}'
  done
  rm -rf "$dind_ws"
}

echo "moatc bench: $RUNS runs each, medians, $(nproc) cores, $(date -u +%FT%TZ)"
"$MOATC" system start >/dev/null
MOATC="$MOATC" bash "$here/scripts/base-images.sh" >/dev/null 2>&1
sock="$MOATC_HOME/containerd/containerd.sock"
img=docker.io/library/busybox:latest
cfg=$(mktemp -p "$MOATC_HOME" runsc-XXXX.toml)
printf 'binary_name = "%s"\n[runsc_config]\n  platform = "systrap"\n' "$PREFIX/bin/runsc" > "$cfg"
if [ "${BENCH_ONLY:-}" = rootless ]; then
  rootless_rows
  exit 0
fi
if [ "${BENCH_ONLY:-}" = engine ]; then
  engine_rows
  exit 0
fi
if [ "${BENCH_ONLY:-}" = warm ]; then
  warm_rows
  # Docker Engine's networked runs and the goals against them, unless BENCH_DOCKER=0.
  if [ "${BENCH_DOCKER:-1}" = 1 ]; then
    docker_up
    docker_warm_goals
  fi
  exit 0
fi

echo
echo "== runc, no network"
row "moatc run --no-sandbox -- true" "$MOATC" run --no-sandbox --network none --image busybox "$ws" -- true
row "ctr run --rm (runc)" ctr -a "$sock" -n moatc run --rm "$img" bench-ctr true
ratio "moatc run --no-sandbox -- true" "ctr run --rm (runc)"

echo
echo "== gVisor (systrap), no network"
row "moatc run -- true (gvisor)" "$MOATC" run --network none --image busybox "$ws" -- true
row "ctr run --rm (runsc shim, same config)" ctr -a "$sock" -n moatc run --rm --runtime io.containerd.runsc.v1 \
  --runtime-config-path "$cfg" --annotation io.kubernetes.cri.container-type=sandbox "$img" bench-ctr-runsc true
ratio "moatc run -- true (gvisor)" "ctr run --rm (runsc shim, same config)"
# The other known-good integration, Docker's: runc's shim with runsc as its binary.
row "ctr run --rm (runc shim, runsc binary)" ctr -a "$sock" -n moatc run --rm --runc-binary "$PREFIX/bin/runsc" \
  "$img" bench-ctr-runcshim true
ratio "moatc run -- true (gvisor)" "ctr run --rm (runc shim, runsc binary)"

# exec: a command beside a running workload, against containerd's own client on the same
# task (goal: moatc exec within 1.2x of ctr task exec).
ctrexec() { ctr -a "$sock" -n moatc task exec --exec-id "bench-$RANDOM$RANDOM" "$1" true; }
for rt in runc gvisor; do
  flag=; [ "$rt" = runc ] && flag=--no-sandbox
  "$MOATC" run -d $flag -n "bench-exec-$rt" --network none --image busybox "$ws" -- sleep 100000 >/dev/null
  cid=$("$MOATC" status --json "bench-exec-$rt" | sed -n 's/.*"container_id": "\(.*\)".*/\1/p')
  echo
  echo "== exec ($rt)"
  row "moatc exec -- true ($rt)" "$MOATC" exec "bench-exec-$rt" -- true
  row "ctr task exec ($rt)" ctrexec "$cid"
  ratio "moatc exec -- true ($rt)" "ctr task exec ($rt)"
  "$MOATC" destroy --force "bench-exec-$rt" >/dev/null
done

echo
echo "== start latency (until the workload runs), debian image: the network's share (goal <= 40 ms)"
startrow "start, runc, --network none" "$MOATC" run --no-sandbox --network none --image debian:bookworm-slim "$ws" -- date +%s%N
startrow "start, runc, networked" "$MOATC" run --no-sandbox --image debian:bookworm-slim "$ws" -- date +%s%N
netcost "start, runc, networked" "start, runc, --network none" "runc, start"
startrow "start, gvisor, --network none" "$MOATC" run --network none --image debian:bookworm-slim "$ws" -- date +%s%N
startrow "start, gvisor, networked" "$MOATC" run --image debian:bookworm-slim "$ws" -- date +%s%N
netcost "start, gvisor, networked" "start, gvisor, --network none" "gvisor, start"

echo
echo "== whole run, start to exit: the network's share, teardown included"
row "moatc run --no-sandbox -- true, networked" "$MOATC" run --no-sandbox --image busybox "$ws" -- true
netcost "moatc run --no-sandbox -- true, networked" "moatc run --no-sandbox -- true" runc
row "moatc run -- true (gvisor), networked" "$MOATC" run --image busybox "$ws" -- true
netcost "moatc run -- true (gvisor), networked" "moatc run -- true (gvisor)" gvisor

# Output: 500 MB through the run's log and out to a pipe, against `ctr run` of the same (ctr
# copies the FIFOs to its stdout; moatc's shim logger writes the log, and moatc prints it as
# it grows). Goals: throughput >= 0.9x ctr's (time <= 1.11x), log <= 1.1x the output for
# binary data (a 50 MB random file, under the default 100 MB cap).
echo
echo "== output: head -c 500000000 /dev/zero | wc -c, and the log's size"
head -c 50000000 /dev/urandom > "$ws/rand.bin"
for rt in runc gvisor; do
  if [ $rt = runc ]; then mflag=--no-sandbox; cflag=(); else mflag=--sandbox-platform=systrap; cflag=(--runtime io.containerd.runsc.v1 --runtime-config-path "$cfg"); fi
  RUNS_SAVED=$RUNS; RUNS=${OUT_RUNS:-5}
  row "moatc run 500 MB to a pipe ($rt)" sh -c "\"$MOATC\" run $mflag --network none --image busybox \"$ws\" -- head -c 500000000 /dev/zero | wc -c"
  row "ctr run 500 MB to a pipe ($rt)" sh -c "ctr -a \"$sock\" -n moatc run --rm ${cflag[*]} $img bench-out head -c 500000000 /dev/zero | wc -c"
  RUNS=$RUNS_SAVED
  awk -v a="${median["moatc run 500 MB to a pipe ($rt)"]}" -v b="${median["ctr run 500 MB to a pipe ($rt)"]}" -v n="$rt" \
    'BEGIN {printf "  throughput against ctr %5.2fx  (%s; goal >= 0.90x)\n", b/a, n}'
  id=$("$MOATC" run -d $mflag --network none --image busybox "$ws" -- cat /workspace/rand.bin)
  while "$MOATC" status --json "$id" | grep -q '"state": "\(created\|running\)"'; do sleep 0.2; done
  lsize=$(stat -c %s "$MOATC_HOME/runs/$id/output.log")
  awk -v l="$lsize" -v n="$rt" 'BEGIN {printf "  log of 50 MB of random bytes: %.4fx the output  (%s; goal <= 1.1x)\n", l/50000000, n}'
done

# Strict egress (the run reaches its proxy only; rules in place before the task) against the
# permissive default, start latency. Both have the proxy; strict differs in its rules.
echo
echo "== strict policy against permissive, start latency"
startrow "start, runc, networked, --policy strict" "$MOATC" run --no-sandbox --policy strict --image debian:bookworm-slim "$ws" -- date +%s%N
awk -v a="${median["start, runc, networked, --policy strict"]}" -v b="${median["start, runc, networked"]}" \
  'BEGIN {printf "  strict adds %6.1f ms  (runc)\n", (a-b)*1000}'
startrow "start, gvisor, networked, --policy strict" "$MOATC" run --policy strict --image debian:bookworm-slim "$ws" -- date +%s%N
awk -v a="${median["start, gvisor, networked, --policy strict"]}" -v b="${median["start, gvisor, networked"]}" \
  'BEGIN {printf "  strict adds %6.1f ms  (gvisor)\n", (a-b)*1000}'

# The proxy against direct, in one process against one local HTTPS server: keep-alive
# throughput (goal >= 70% of direct) and a new connection once the leaf is cached (goal within
# 5 ms of direct).
echo
echo "== the credential proxy against direct"
(cd "$here" && go test ./proxy -run '^$' -bench '^BenchmarkProxy$' -benchtime 1x -count=1) 2>&1 | awk '/^proxy: / {print "  " $0}'

# The dependency path when nothing changed: plan, hash and one image lookup (goal: <= 20 ms).
echo
echo "== dependency image, already built, against the same image named directly"
dws=$(mktemp -d)
printf 'dependencies: [jq]\nnetwork: none\nsandbox: none\n' > "$dws/moatc.yaml"
"$MOATC" trust "$dws" >/dev/null
dimg=$("$MOATC" build -q "$dws")
pws=$(mktemp -d)
row "moatc run (dependencies: [jq], built)" "$MOATC" run "$dws" -- true
row "moatc run --image <that image>" "$MOATC" run --no-sandbox --network none --image "$dimg" "$pws" -- true
awk -v a="${median["moatc run (dependencies: [jq], built)"]}" -v b="${median["moatc run --image <that image>"]}" \
  'BEGIN {printf "  dependency path adds %6.1f ms\n", (a-b)*1000}'
rm -rf "$dws" "$pws"

# A cold build of the test dependency set: a fresh home (its own containerd and buildkitd,
# empty caches), so every download and layer is made anew.
if [ "${BENCH_COLD:-1}" = 1 ]; then
  cold=$(mktemp -d /tmp/moatc-cold-XXXX)
  cws=$(mktemp -d)
  printf 'dependencies: [jq, node, npm:typescript, go]\n' > "$cws/moatc.yaml"
  MOATC_HOME=$cold "$MOATC" image import "$PREFIX/images/debian-bookworm-slim.oci.tar" >/dev/null
  t0=$(date +%s%N)
  MOATC_HOME=$cold "$MOATC" build -q "$cws" >/dev/null
  t1=$(date +%s%N)
  printf '%-46s %8.1fs\n' "cold build: jq, node, npm:typescript, go" "$(awk -v d=$((t1 - t0)) 'BEGIN {print d/1e9}')"
  MOATC_HOME=$cold "$MOATC" system stop --force >/dev/null 2>&1 || true
  rm -rf "$cold" "$cws"
fi

# The containment rules (the host closed, hardening, pinned mounts) against the moatc before
# them, built from BENCH_BASELINE in this run, each with its own warm home. Goal: unchanged
# within noise.
baseline=${BENCH_BASELINE:-35bf031}
if [ "${BENCH_RULES:-1}" = 1 ] && git -C "$here" cat-file -e "$baseline^{commit}" 2>/dev/null; then
  bdir=$(mktemp -d /tmp/moatc-baseline-XXXX)
  git -C "$here" worktree add -q --detach "$bdir/src" "$baseline"
  (cd "$bdir/src" && go build -o "$bdir/moatc" ./cmd/moatc)
  git -C "$here" worktree remove --force "$bdir/src"
  bhome="$bdir/home"
  MOATC_HOME=$bhome "$bdir/moatc" image import "$PREFIX/images/busybox.oci.tar" >/dev/null
  MOATC_HOME=$bhome "$bdir/moatc" image import "$PREFIX/images/debian-bookworm-slim.oci.tar" >/dev/null
  echo
  echo "== the containment rules: this moatc against $baseline (before them), start latency"
  startrow "start, runc, networked, $baseline" env MOATC_HOME="$bhome" "$bdir/moatc" run --no-sandbox --image debian:bookworm-slim "$ws" -- date +%s%N
  ratio "start, runc, networked" "start, runc, networked, $baseline"
  startrow "start, gvisor, networked, $baseline" env MOATC_HOME="$bhome" "$bdir/moatc" run --image debian:bookworm-slim "$ws" -- date +%s%N
  ratio "start, gvisor, networked" "start, gvisor, networked, $baseline"
  MOATC_HOME=$bhome "$bdir/moatc" clean >/dev/null 2>&1 || true
  MOATC_HOME=$bhome "$bdir/moatc" system stop --force >/dev/null 2>&1 || true
  rm -rf "$bdir"
fi

# A dependency build in moatc's sandbox (RUN steps in gVisor, on the build network) against the
# same build the old way (runc, the host's network), both cold, alternating. Goal: <= 1.5x.
if [ "${BENCH_COLD:-1}" = 1 ]; then
  echo
  echo "== cold dependency build (jq, node, npm:typescript, go): sandboxed against unsandboxed"
  (cd "$here" && MOATC_PREFIX=$PREFIX go test ./builder -run '^$' -bench ColdBuildSandboxed -benchtime "${BUILD_RUNS:-1}x" -timeout 60m) 2>&1 |
    awk '/^cold build/ {print "  " $0} /^BenchmarkColdBuildSandboxed/ {
      for (i = 1; i <= NF; i++) { if ($(i+1) == "s-sandboxed") s = $i; if ($(i+1) == "s-unsandboxed") u = $i; if ($(i+1) == "ratio") r = $i }
      printf "%-46s %8.1fs\n%-46s %8.1fs\n  ratio %-36s %5.2fx  (sandboxed / unsandboxed)\n", "cold build, sandboxed (median)", s, "cold build, runc + host network (median)", u, "", r }'
fi

warm_rows

engine_rows

if [ "${BENCH_ROOTLESS:-1}" = 1 ]; then
  rootless_rows
fi

# Docker Engine (Debian's docker.io), started by hand with its own data root and socket, for
# this comparison only; gVisor through runsc as Docker users configure it.
if [ "${BENCH_DOCKER:-1}" = 1 ]; then
  docker_up
  echo
  echo "== Docker Engine $(docker version -f '{{.Server.Version}}'), --network none"
  row "docker run --rm --network none (runc)" docker run --rm --network none moatc-bench/busybox true
  ratio "moatc run --no-sandbox -- true" "docker run --rm --network none (runc)"
  row "docker run --rm --runtime=runsc --network none" docker run --rm --runtime=runsc --network none moatc-bench/busybox true
  ratio "moatc run -- true (gvisor)" "docker run --rm --runtime=runsc --network none"
  docker run -d --name moatc-bench-exec --network none moatc-bench/busybox sleep 100000 >/dev/null
  row "docker exec (runc)" docker exec moatc-bench-exec true
  ratio "moatc exec -- true (runc)" "docker exec (runc)"
  docker rm -f moatc-bench-exec >/dev/null
  echo
  echo "== Docker Engine, networked (its bridge) against moatc networked"
  row "docker run --rm (runc, bridge)" docker run --rm moatc-bench/busybox true
  ratio "moatc run --no-sandbox -- true, networked" "docker run --rm (runc, bridge)"
  row "docker run --rm --runtime=runsc (bridge)" docker run --rm --runtime=runsc moatc-bench/busybox true
  ratio "moatc run -- true (gvisor), networked" "docker run --rm --runtime=runsc (bridge)"
  docker_warm_goals
fi
