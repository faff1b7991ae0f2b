package run

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/state"
)

// Process is one process of a running run, as `moatc top` shows it.
type Process struct {
	// PID is the host's pid for a runc run; for a gVisor run it is the pid inside the
	// sandbox (the host sees only the sandbox's own processes).
	PID  int    `json:"pid"`
	PPID int    `json:"ppid"`
	UID  int    `json:"uid"`
	Time string `json:"time"` // CPU time used
	Cmd  string `json:"cmd"`  // the command line (runc); the command's name (gVisor)
}

// Top is the process list of one run.
type Top struct {
	Run       string    `json:"run"`
	Runtime   string    `json:"runtime"`
	Processes []Process `json:"processes"`
}

// runningTask resolves ref to a run whose task is running, for a command (action) that only
// makes sense on one.
func (m *Manager) runningTask(ctx context.Context, ref, action string) (*state.Run, containerd.Task, error) {
	r, _, task, err := m.running(ctx, ref)
	if err != nil {
		var nr *NotRunningError
		if errors.As(err, &nr) {
			return nil, nil, fmt.Errorf("%s: %w (see `moatc list`)", action, err)
		}
		return nil, nil, fmt.Errorf("%s: %w", action, err)
	}
	return r, task, nil
}

// Top lists the processes of a running run.
func (m *Manager) Top(ctx context.Context, ref string) (*Top, error) {
	r, task, err := m.runningTask(ctx, ref, "listing processes")
	if err != nil {
		return nil, err
	}
	t := &Top{Run: r.ID, Runtime: string(r.Spec.Runtime)}
	if r.Spec.Runtime == "runc" {
		if t.Processes, err = TaskProcesses(ctx, task, "", ""); err != nil {
			return nil, fmt.Errorf("listing the processes of run %s: %w", r.ID, err)
		}
	} else {
		if t.Processes, err = m.sandboxProcesses(ctx, r); err != nil {
			return nil, fmt.Errorf("listing the processes of run %s: %w", r.ID, err)
		}
	}
	if t.Processes == nil {
		t.Processes = []Process{}
	}
	return t, nil
}

// TaskProcesses lists the processes of a running task: from the host's /proc for runc
// (runsc ""), or from runsc ps with root (runsc's state root of the task's namespace).
func TaskProcesses(ctx context.Context, task containerd.Task, runsc, root string) ([]Process, error) {
	if runsc != "" {
		return runscPs(ctx, runsc, root, task.ID())
	}
	pids, err := task.Pids(ctx)
	if err != nil {
		return nil, err
	}
	procs := []Process{}
	for _, p := range pids {
		// A process may end between the listing and the read: it is simply left out.
		if pr, err := hostProcess("/proc", int(p.Pid)); err == nil {
			procs = append(procs, pr)
		}
	}
	return procs, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every Linux Go runs on.
const clockTicks = 100

// hostProcess reads one process from a /proc directory.
func hostProcess(proc string, pid int) (Process, error) {
	dir := filepath.Join(proc, strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Process{}, err
	}
	// The command's name is in parentheses and may hold anything, ')' included: the fields
	// start after the last one.
	i := bytes.LastIndexByte(stat, ')')
	j := bytes.IndexByte(stat, '(')
	if i < 0 || j < 0 || j > i {
		return Process{}, fmt.Errorf("%s/stat: unexpected format", dir)
	}
	comm := string(stat[j+1 : i])
	f := strings.Fields(string(stat[i+1:]))
	// After the name: state(0) ppid(1) ... utime(11) stime(12).
	if len(f) < 13 {
		return Process{}, fmt.Errorf("%s/stat: unexpected format", dir)
	}
	ppid, _ := strconv.Atoi(f[1])
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	p := Process{PID: pid, PPID: ppid, UID: -1, Cmd: comm,
		Time: cpuTime(time.Duration(ut+st) * time.Second / clockTicks)}
	if status, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		for l := range strings.SplitSeq(string(status), "\n") {
			if rest, ok := strings.CutPrefix(l, "Uid:"); ok {
				if fs := strings.Fields(rest); len(fs) > 0 {
					p.UID, _ = strconv.Atoi(fs[0])
				}
			}
		}
	}
	if cl, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil && len(cl) > 0 {
		p.Cmd = strings.TrimSpace(strings.ReplaceAll(string(bytes.TrimRight(cl, "\x00")), "\x00", " "))
	}
	return p, nil
}

// cpuTime formats a CPU time as ps does: [D-]HH:MM:SS.
func cpuTime(d time.Duration) string {
	s := int64(d / time.Second)
	days, s := s/86400, s%86400
	out := fmt.Sprintf("%02d:%02d:%02d", s/3600, s%3600/60, s%60)
	if days > 0 {
		out = fmt.Sprintf("%d-%s", days, out)
	}
	return out
}

// sandboxProcesses asks runsc for the processes inside a gVisor run's sandbox: the host's
// /proc shows only the sandbox, and containerd's task.Pids gives bare pids.
func (m *Manager) sandboxProcesses(ctx context.Context, r *state.Run) ([]Process, error) {
	sc := m.sandboxScope()
	if sc.Runsc == "" {
		return nil, fmt.Errorf("runsc is not installed: run `make setup`")
	}
	ns := r.Namespace
	if ns == "" {
		ns = sc.Namespace
	}
	// The home's own root; runs from before it had one are under runsc's shared root.
	root := filepath.Join(sc.Root, ns)
	if legacy := filepath.Join(ctrd.LegacyRunscRoot, ns); !hasState(root, r.ContainerID) && hasState(legacy, r.ContainerID) {
		root = legacy
	}
	return runscPs(ctx, sc.Runsc, root, r.ContainerID)
}

// hasState says whether runsc's root holds state for container id.
func hasState(root, id string) bool {
	m, _ := filepath.Glob(filepath.Join(root, id+"_sandbox:*.state"))
	return len(m) > 0
}

func runscPs(ctx context.Context, runsc, root, id string) ([]Process, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	// Table, not json: runsc's json format holds the pids alone.
	cmd := exec.CommandContext(ctx, runsc, "--root", root, "ps", id)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("runsc ps: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return parseRunscPs(out)
}

// parseRunscPs reads runsc's table: UID PID PPID PGID C TTY STIME TIME CMD, the command's
// name last (it may hold spaces).
func parseRunscPs(out []byte) ([]Process, error) {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || !strings.HasPrefix(strings.TrimSpace(lines[0]), "UID") {
		return nil, fmt.Errorf("reading runsc ps: unexpected output %q", out)
	}
	procs := []Process{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 9 {
			return nil, fmt.Errorf("reading runsc ps: unexpected line %q", l)
		}
		uid, err1 := strconv.Atoi(f[0])
		pid, err2 := strconv.Atoi(f[1])
		ppid, err3 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || err3 != nil {
			return nil, fmt.Errorf("reading runsc ps: unexpected line %q", l)
		}
		t := f[7]
		if d, err := time.ParseDuration(t); err == nil {
			t = cpuTime(d)
		}
		procs = append(procs, Process{PID: pid, PPID: ppid, UID: uid, Time: t, Cmd: strings.Join(f[8:], " ")})
	}
	return procs, nil
}
