// Command containerd-shim-runsc-v1 is moatc's build of the gVisor containerd
// shim (runtime type io.containerd.runsc.v1).
//
// It is gVisor's own shim (gvisor.dev/gvisor/pkg/shim/v1 and its runsc task
// service, used unchanged) with three faults of the stock binary fixed from
// the outside, its start-to-exit path made shorter, containerd's binary log
// URIs supported, and failed creates made safe (rootless included):
//
//  1. manager.go: starting the shim no longer fails when the OOM score of the
//     shim cannot be lowered to -999 (no CAP_SYS_RESOURCE in the bounding
//     set). The adjustment is best effort and its failure goes to the shim
//     log, never to the start command's stdout/stderr (containerd reads both
//     as the bootstrap reply).
//  2. service.go: a spec with no container-type annotation (anything that is
//     not CRI: ctr, BuildKit, moatc) is marked as a sandbox, the type runsc
//     gives it anyway, so the shim wires the container's stdio to
//     `runsc create` instead of hanging.
//  3. exits.go: when `runsc wait` starts after the sandbox is gone and the
//     stock code reports 128, the real status is taken from the shim's reaper,
//     which reaped the sandbox process (the shim is its subreaper).
//  4. monitor.go, exits.go, manager.go (Stop): fewer runsc executions. The
//     stock shim runs, for `ctr run IMG true`, `runsc state` after start,
//     `runsc wait`, three `runsc kill --all` on an already dead sandbox, and
//     `runsc delete --force` again in the `delete` command, each 10-25 ms,
//     most of them in series between the container's exit and its removal.
//     For a root container whose sandbox is this shim's child, wait, state
//     and kill-after-exit are answered from the reaper, as the runc shim
//     does; the clean-up of an already deleted task skips runsc.
//  5. binaryio.go, service.go (Create, State, Delete), manager.go (Stop): a
//     task whose stdout is a binary log URI (binary:///path/to/logger?k=v,
//     which gVisor's shim would take for a file name) gets its logger as under
//     containerd's runc shim: args from the query, CONTAINER_ID and
//     CONTAINER_NAMESPACE, the container's stdout on fd 3, its stderr on fd 4,
//     the ready pipe on fd 5. gVisor writes the output into two FIFOs in the
//     bundle whose read ends the logger holds, and the task's Delete returns
//     once the logger has exited (on EOF; a logger still running 10 s after
//     the Delete began gets SIGTERM, then SIGKILL).
//  6. create.go: a Create that fails only because the sandbox's memory cgroup
//     cannot be watched for OOM kills (rootless containerd, cgroup v1, nothing
//     delegated) succeeds with a warning, as under containerd's runc shim. Any
//     other Create failing after `runsc create` kills the sandbox and deletes
//     the task first, so no shim, gofer or sandbox is left running.
package main

import (
	"context"

	containerdshim "github.com/containerd/containerd/v2/pkg/shim"
	gvshim "gvisor.dev/gvisor/pkg/shim/v1"
)

// runtimeName is the containerd runtime type this binary serves.
const runtimeName = "io.containerd.runsc.v1"

func main() {
	// The task service is registered by this package (service.go) instead of
	// gvisor.dev/gvisor/pkg/shim/v1/plugin, which must not be imported: it
	// would register a second "task" plugin.
	containerdshim.Run(context.Background(), &manager{Manager: gvshim.NewShimManager(runtimeName)})
}
