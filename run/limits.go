package run

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/rootless"
)

// Limits is what this host lets moatc limit for a run. As root, everything. Rootless, runc
// (and runsc) can only put a run in a cgroup the user may write: on cgroup v1 there is none
// without root, so no limit can be applied; on cgroup v2, the controllers that the user's
// delegated cgroup offers.
type Limits struct {
	Rootless bool
	// CgroupV2 is a host with the unified hierarchy alone; false for v1 and hybrid hosts,
	// whose controllers are all on v1.
	CgroupV2 bool
	// Cgroup is, rootless on cgroup v2, the cgroup moatc runs in (e.g. /user.slice/...), and
	// Delegated the controllers it offers, when the user may make cgroups under it.
	Cgroup    string
	Delegated []string
}

// Controller of each limit: the cgroup controller that enforces it.
const (
	MemoryController = "memory"
	CPUController    = "cpu"
	PidsController   = "pids"
)

// Allows reports whether a limit enforced by controller can be applied.
func (l Limits) Allows(controller string) bool {
	return !l.Rootless || l.CgroupV2 && slices.Contains(l.Delegated, controller)
}

// Available reports whether every limit can be applied.
func (l Limits) Available() bool {
	return l.Allows(MemoryController) && l.Allows(CPUController) && l.Allows(PidsController)
}

// Why says why a limit enforced by controller cannot be applied, and what would make it work;
// "" when it can.
func (l Limits) Why(controller string) string {
	if l.Allows(controller) {
		return ""
	}
	const fix = "a cgroup v2 host where systemd delegates the user's cgroup (user@.service with Delegate=yes, the default), or moatc run as root"
	if !l.CgroupV2 {
		return "rootless moatc cannot set resource limits on a cgroup v1 host: the runtime can make no cgroup for a user there without root. Limits need " + fix
	}
	if l.Cgroup == "" || len(l.Delegated) == 0 {
		return fmt.Sprintf("rootless moatc cannot set resource limits here: cgroup v2, but moatc's cgroup (%s) is not delegated to this user (it is not writable, e.g. a login session's scope). Limits need %s; start moatc from a delegated cgroup (e.g. `systemd-run --user --scope moatc ...`)", orUnknown(l.Cgroup), fix)
	}
	return fmt.Sprintf("rootless moatc cannot set this limit here: the %s controller is not delegated to this user's cgroup %s (it offers %s). Limits need %s", controller, l.Cgroup, strings.Join(l.Delegated, " "), fix)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// Summary is one line for `moatc system status`.
func (l Limits) Summary() string {
	switch {
	case !l.Rootless:
		return "available"
	case l.Available():
		return "available (cgroup v2, delegated: " + strings.Join(l.Delegated, " ") + ")"
	}
	var some []string
	for _, c := range []string{MemoryController, CPUController, PidsController} {
		if l.Allows(c) {
			some = append(some, c)
		}
	}
	if len(some) > 0 {
		return "only " + strings.Join(some, ", ") + ": " + l.Why(firstMissing(l))
	}
	return "not available: " + l.Why(MemoryController)
}

func firstMissing(l Limits) string {
	for _, c := range []string{MemoryController, CPUController, PidsController} {
		if !l.Allows(c) {
			return c
		}
	}
	return ""
}

var hostLimits = sync.OnceValue(func() Limits {
	l := Limits{Rootless: rootless.Enabled()}
	if !l.Rootless {
		return l
	}
	var fs unix.Statfs_t
	l.CgroupV2 = unix.Statfs("/sys/fs/cgroup", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
	if l.CgroupV2 {
		self, _ := os.ReadFile("/proc/self/cgroup")
		l.Cgroup, l.Delegated = delegation("/sys/fs/cgroup", string(self))
	}
	return l
})

// HostLimits is what this host lets this moatc limit (detected once per process).
func HostLimits() Limits { return hostLimits() }

// delegation reads, on a cgroup v2 host mounted at root, the cgroup that procSelfCgroup (the
// text of /proc/self/cgroup) names and the controllers it offers, when this user may make
// cgroups under it; no controllers otherwise.
func delegation(root, procSelfCgroup string) (cgroup string, controllers []string) {
	for _, line := range strings.Split(procSelfCgroup, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			cgroup = p
		}
	}
	if cgroup == "" {
		return "", nil
	}
	dir := filepath.Join(root, cgroup)
	// Making a child cgroup and moving a process into it both need write access here.
	if unix.Access(dir, unix.W_OK) != nil || unix.Access(filepath.Join(dir, "cgroup.procs"), unix.W_OK) != nil {
		return cgroup, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return cgroup, nil
	}
	return cgroup, strings.Fields(string(b))
}
