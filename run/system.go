package run

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/state"
)

// StopStack stops what moatc started on this host for its home: buildkitd first (it works on
// containerd's store), then the managed containerd; then it removes the sandboxes' leftovers
// and the build network. Active runs make it refuse unless force: their tasks run on in their
// shims, and the next moatc command follows them again.
//
// Rootless, the managed daemon is rootlesskit, and its namespaces end with it: see
// stopRootless.
func (m *Manager) StopStack(ctx context.Context, force bool) error {
	runs, err := m.Store.List()
	if err != nil {
		return err
	}
	kit := m.Conn.Daemon != nil && m.Conn.Daemon.Kit != nil && m.Conn.Address == ""
	for _, r := range runs {
		if r.Active() && !force {
			if kit {
				return fmt.Errorf("run %s is active, and rootless its workload ends with the stack: stop it first (`moatc stop %s`), or use `moatc system stop --force` (stops every active run)", r.Name, r.Name)
			}
			return fmt.Errorf("run %s is active: stop it first (`moatc stop %s`), or use `moatc system stop --force`", r.Name, r.Name)
		}
	}
	if kit {
		return m.stopRootless(ctx, runs)
	}
	// The warm pool's idle sandboxes would outlive containerd in their shims.
	if err := m.drainPool(ctx, &CleanReport{}, false); err != nil {
		return err
	}
	if err := m.StopBuilder(ctx, 10*time.Second); err != nil {
		return err
	}
	if d := m.Conn.Daemon; d != nil {
		if err := d.Stop(ctx, 10*time.Second); err != nil {
			return err
		}
	}
	if _, err := m.SweepSandboxes(ctx, false); err != nil {
		return err
	}
	if err := m.PruneSandboxRoot(); err != nil {
		return err
	}
	return cni.Prune(ctx)
}

// stopRootless stops a rootless stack. Killing rootlesskit ends its user, mount and network
// namespaces, so no task can outlive it as tasks outlive a rootful containerd: the active
// runs are stopped first (each with its own grace) and their ends recorded; then buildkitd and
// rootlesskit; then whatever is left in the kit's namespaces (shims, runc's containers,
// gVisor's sandboxes and gofers, loggers) is killed, and so is what earlier kits of this home
// left (a kit killed with -9). Network namespaces, bridges and firewall rules need no
// sweeping: they lived in the kit's network namespace.
func (m *Manager) stopRootless(ctx context.Context, runs []*state.Run) error {
	d := m.Conn.Daemon
	current := m.currentKit()
	var errs []error
	if d.Answering() {
		errs = append(errs, m.stopRuns(ctx, runs))
		// Closed now: once containerd is gone, nothing may call it.
		m.Close()
		if err := m.StopBuilder(ctx, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.Stop(ctx, 10*time.Second); err != nil {
		return errors.Join(append(errs, err)...)
	}
	// Processes of the kit's namespaces live on without it (shims are not its children); ours
	// is one of them when moatc entered them, and ends with this command. Dead kits' too.
	namespaces := staleKits(kitProcesses(), m.home())
	if current != 0 && !slices.Contains(namespaces, current) {
		namespaces = append(namespaces, current)
	}
	if _, err := killUserNS(namespaces, 5*time.Second); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// stopRuns stops the active runs, all at once, and waits for their ends to be recorded and
// for their supervisors to exit: a supervisor records the end first, then deletes the task,
// the container and the network, which must happen before containerd goes.
func (m *Manager) stopRuns(ctx context.Context, runs []*state.Run) error {
	var wg sync.WaitGroup
	errs := make([]error, len(runs))
	for i, r := range runs {
		if !r.Active() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			end, err := m.Stop(ctx, r.ID, -1)
			if err != nil {
				errs[i] = fmt.Errorf("stopping run %s: %w", r.Name, err)
				return
			}
			for deadline := time.Now().Add(15 * time.Second); end != nil && end.Supervisor.Alive() && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// currentKit is the user namespace of this home's running kit; 0 when none runs.
func (m *Manager) currentKit() userNS {
	if rootless.InUserNamespace() {
		// moatc entered the kit's namespaces (rootless.Kit.Enter): they are its own.
		ns, _ := outerUserNS(os.Getpid())
		return ns
	}
	d := m.Conn.Daemon
	kit, ok := d.Pid()
	if !ok {
		return 0
	}
	// The child's pid is taken only while it is still the running kit's child: a pid left in a
	// dead kit's file may be anyone's now.
	child, err := d.Kit.ChildPid()
	if err != nil || parentOf(child) != kit {
		return 0
	}
	ns, _ := outerUserNS(child)
	return ns
}

// parentOf is pid's parent pid; 0 if unknown.
func parentOf(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// home is moatc's home as an absolute path, as it appears in its processes' arguments.
func (m *Manager) home() string {
	if abs, err := filepath.Abs(m.Dir); err == nil {
		return abs
	}
	return filepath.Clean(m.Dir)
}
