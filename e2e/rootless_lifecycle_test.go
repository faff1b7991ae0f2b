package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The life of runs in rootless mode, as the user: list, stop, destroy and clean; moatc killed
// with -9 under a run; rootlesskit killed with -9 (alone, and with every process of the home);
// system stop; limits; system status. containerd's own client, run by root on the user's
// socket, is the independent witness of what is left in containerd.

// rlStart starts the rootless moatc as the user without waiting for it.
func rlStart(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(rl.bin, args...)
	cmd.Env = []string{
		"HOME=" + rl.hdir, "USER=" + rl.user, "LOGNAME=" + rl.user,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"MOATC_HOME=" + rl.dir, "MOATC_PREFIX=" + prefix,
	}
	cmd.Dir = rl.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(rl.uid), Gid: uint32(rl.gid), Groups: []uint32{}}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

func rlStatus(t *testing.T, ref string) runRecord {
	t.Helper()
	var r runRecord
	decodeJSON(t, rlRun(t, 0, "status", "--json", ref).stdout, &r)
	return r
}

func rlList(t *testing.T) []runRecord {
	t.Helper()
	var rs []runRecord
	decodeJSON(t, rlRun(t, 0, "list", "--json").stdout, &rs)
	return rs
}

// rlWaitLog waits until the run's log holds text.
func rlWaitLog(t *testing.T, ref, text string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if r := rlExec(context.Background(), opts{}, "logs", ref); r.code == 0 && strings.Contains(r.stdout, text) {
			return
		}
	}
	t.Fatalf("run %s never printed %q", ref, text)
}

// rlCtr runs containerd's client (as root) on the user's containerd and returns its rows.
func rlCtr(t *testing.T, args ...string) []string {
	t.Helper()
	full := append([]string{"-a", filepath.Join(rl.dir, "containerd", "containerd.sock"), "-n", "moatc"}, args...)
	out, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), full...).Output()
	if err != nil {
		t.Fatalf("ctr %v on the rootless containerd: %v", args, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[1:]
}

// rlSnapshotter is the snapshotter the user's moatc chose (system status).
func rlSnapshotter(t *testing.T) string {
	t.Helper()
	return rlSystemStatus(t).Snapshotter.Name
}

type rlStackStatus struct {
	Containerd struct {
		State string `json:"state"`
		Pid   int    `json:"pid"`
	} `json:"containerd"`
	Rootless struct {
		Enabled       bool   `json:"enabled"`
		KitPid        int    `json:"kit_pid"`
		StateDir      string `json:"state_dir"`
		NetworkDriver string `json:"network_driver"`
		PortDriver    string `json:"port_driver"`
	} `json:"rootless"`
	Snapshotter struct {
		Name   string `json:"name"`
		Reason string `json:"reason"`
	} `json:"snapshotter"`
	Limits struct {
		Available bool   `json:"available"`
		Detail    string `json:"detail"`
	} `json:"limits"`
}

func rlSystemStatus(t *testing.T) rlStackStatus {
	t.Helper()
	var st rlStackStatus
	r := rlRun(t, 0, "system", "status", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("system status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// rlNothingOf checks containerd holds no container, task or snapshot of the container ids,
// and no process of the home names them.
func rlNothingOf(t *testing.T, ids ...string) {
	t.Helper()
	sn := rlSnapshotter(t)
	for _, what := range [][]string{{"containers", "ls"}, {"tasks", "ls"}, {"snapshots", "--snapshotter", sn, "ls"}} {
		for _, row := range rlCtr(t, what...) {
			for _, id := range ids {
				if strings.Contains(row, id) {
					t.Errorf("ctr %s: %s is left: %s", strings.Join(what, " "), id, row)
				}
			}
		}
	}
	for _, p := range userProcesses(rl.uid, rl.dir) {
		for _, id := range ids {
			if strings.Contains(p, id) {
				t.Errorf("a process of %s is left: %s", id, p)
			}
		}
	}
}

// TestRootlessLifecycle: a detached run is listed, stopped (its trap runs, its exit code is
// recorded, its task goes), destroyed (container and snapshot go); a finished run is removed by
// clean. Under each runtime.
func TestRootlessLifecycle(t *testing.T) {
	rootless(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := rlWorkspace(t)
			name := "rl-life-" + rt
			r := rlRun(t, 0, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done")...)
			id := strings.TrimSpace(r.stdout)
			rlWaitLog(t, name, "ready")
			var listed bool
			for _, run := range rlList(t) {
				if run.ID == id {
					listed = true
					if run.State != "running" || run.Name != name || run.Spec.Runtime != rt {
						t.Errorf("list: %+v", run)
					}
				}
			}
			if !listed {
				t.Fatalf("run %s is not listed", id)
			}
			st := rlStatus(t, name)
			var task bool
			for _, row := range rlCtr(t, "tasks", "ls") {
				task = task || strings.HasPrefix(row, st.ContainerID+" ")
			}
			if !task {
				t.Errorf("containerd has no task %s while the run runs", st.ContainerID)
			}

			rlRun(t, 0, "stop", "-t", "20", name)
			st = rlStatus(t, name)
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 42 {
				t.Errorf("after stop: %+v", st)
			}
			if l := rlRun(t, 0, "logs", name); !strings.Contains(l.stdout, "got-term") {
				t.Errorf("the TERM trap did not run: %q", l.stdout)
			}
			for _, row := range rlCtr(t, "tasks", "ls") {
				if strings.HasPrefix(row, st.ContainerID+" ") {
					t.Errorf("task left after stop: %s", row)
				}
			}
			rlRun(t, 0, "destroy", name)
			if r := rlExec(context.Background(), opts{}, "status", name); r.code == 0 {
				t.Errorf("status after destroy: exit 0: %s", r.stdout)
			}
			rlNothingOf(t, st.ContainerID)

			done := "rl-done-" + rt
			rlRun(t, 7, busyboxRun(rt, []string{"-n", done}, ws, "sh", "-c", "exit 7")...)
			fin := rlStatus(t, done)
			c := rlRun(t, 0, "clean")
			if !strings.Contains(c.stdout, "removed run "+fin.ID) {
				t.Errorf("clean did not remove the finished run %s: %s", fin.ID, c.stdout)
			}
			for _, run := range rlList(t) {
				if run.ID == fin.ID {
					t.Errorf("run %s listed after clean", fin.ID)
				}
			}
			rlNothingOf(t, fin.ContainerID)
		})
	}
}

// TestRootlessKill9OfMoatc: moatc killed with -9 under its foreground run: the next command
// finds the run failed and its workload killed, and clean removes it, leaving no task,
// container, snapshot or process of it.
func TestRootlessKill9OfMoatc(t *testing.T) {
	rootless(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := rlWorkspace(t)
			name := "rl-k9-" + rt
			fg := rlStart(t, busyboxRun(rt, []string{"-n", name}, ws, "sh", "-c", "echo ready; sleep 300")...)
			rlWaitLog(t, name, "ready")
			st := rlStatus(t, name)
			if st.State != "running" {
				t.Fatalf("state %q, want running", st.State)
			}
			fg.Process.Signal(syscall.SIGKILL)
			fg.Wait()
			var found bool
			for _, r := range rlList(t) {
				if r.ID == st.ID {
					found = true
					if r.State != "failed" || !strings.Contains(r.Error, "gone") {
						t.Errorf("after kill -9: %+v", r)
					}
				}
			}
			if !found {
				t.Fatalf("run %s not listed after kill -9 of its moatc", name)
			}
			for _, row := range rlCtr(t, "tasks", "ls") {
				if strings.HasPrefix(row, st.ContainerID+" ") {
					t.Errorf("task left running: %s", row)
				}
			}
			if c := rlRun(t, 0, "clean"); !strings.Contains(c.stdout, "removed run "+st.ID) {
				t.Errorf("clean did not remove run %s: %s", st.ID, c.stdout)
			}
			rlNothingOf(t, st.ContainerID)
		})
	}
}

// kitPid is the running rootlesskit's pid, from the daemon's pid file.
func kitPid(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rl.dir, "containerd", "containerd.pid"))
	if err != nil {
		t.Fatalf("the rootless daemon's pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.Fields(string(b))[0])
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// onlyTheStack checks every live process of the home is the running kit or a descendant of it
// (its child, containerd, slirp4netns): nothing else of the home runs.
func onlyTheStack(t *testing.T) {
	t.Helper()
	kit := kitPid(t)
	for _, p := range userProcesses(rl.uid, rl.dir) {
		pid, _ := strconv.Atoi(strings.Fields(p)[0])
		if !descends(pid, kit) {
			t.Errorf("a process of the home outside the new stack (kit %d): %s", kit, p)
		}
	}
}

// descends reports whether pid is anc or one of its descendants.
func descends(pid, anc int) bool {
	for i := 0; pid > 1 && i < 64; i++ {
		if pid == anc {
			return true
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		pid, _ = strconv.Atoi(f[1])
	}
	return false
}

// kitChild is the running rootlesskit's child: the process that holds its namespaces.
func kitChild(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(rl.dir, "rootless", "child_pid"))
	if err != nil {
		t.Fatalf("rootlesskit's child_pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// outerUserNS is the inode of pid's outermost user namespace below the host's: its kit's,
// for the processes of a kit and of the namespaces nested in it (gVisor's); 0 for the host's.
func outerUserNS(pid int) uint64 {
	const hostUserNS = 0xEFFFFFFD
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer func() { unix.Close(fd) }()
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Ino == hostUserNS {
		return 0
	}
	for {
		parent, err := unix.IoctlRetInt(fd, unix.NS_GET_PARENT)
		if err != nil {
			return st.Ino
		}
		var pst unix.Stat_t
		if unix.Fstat(parent, &pst) != nil || pst.Ino == hostUserNS {
			unix.Close(parent)
			return st.Ino
		}
		unix.Close(fd)
		fd, st = parent, pst
	}
}

// inUserNS lists the live processes (not zombies) whose outermost user namespace is ns.
func inUserNS(ns uint64) []int {
	if ns == 0 {
		return nil
	}
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || outerUserNS(pid) != ns {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !bytes.Contains(b[bytes.LastIndexByte(b, ')'):], []byte(") Z")) {
			out = append(out, pid)
		}
	}
	return out
}

// kill9 kills pids with SIGKILL and waits until they are gone (or zombies).
func kill9(t *testing.T, pids []int) {
	t.Helper()
	for _, p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	waitGone(t, pids...)
}

// waitGone waits until pids are gone (or zombies).
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		alive := false
		for _, p := range pids {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
			alive = alive || err == nil && !bytes.Contains(b[bytes.LastIndexByte(b, ')'):], []byte(") Z"))
		}
		if !alive {
			return
		}
	}
	t.Fatalf("processes %v are still running", pids)
}

// startBoth starts a detached run under each runtime and waits until both run.
func startBoth(t *testing.T, prefix string) []runRecord {
	t.Helper()
	ws := rlWorkspace(t)
	var runs []runRecord
	for _, rt := range runtimes {
		name := prefix + rt
		rlRun(t, 0, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "echo ready; sleep 300")...)
		rlWaitLog(t, name, "ready")
		runs = append(runs, rlStatus(t, name))
	}
	return runs
}

// TestRootlessKitKilled: rootlesskit dies (kill -9) under running runs. (a) rootlesskit
// alone: its shims, workloads and sandboxes live on in its namespaces, out of containerd's
// reach; the next command kills them before it starts a fresh kit, and clean leaves no
// container, snapshot, active run or process of them. (b) a crash: rootlesskit and every
// process of the home killed; the next command starts a fresh kit and clean leaves nothing.
func TestRootlessKitKilled(t *testing.T) {
	rootless(t)
	check := func(t *testing.T, runs []runRecord) {
		t.Helper()
		for _, r := range rlList(t) {
			if r.State == "running" || r.State == "created" || r.State == "stopping" {
				t.Errorf("run %s is %s after its kit died", r.Name, r.State)
			}
		}
		rlRun(t, 0, "clean")
		var ids []string
		for _, r := range runs {
			ids = append(ids, r.ContainerID)
			if s := rlExec(context.Background(), opts{}, "status", r.ID); s.code == 0 {
				t.Errorf("run %s still recorded after clean: %s", r.Name, s.stdout)
			}
		}
		rlNothingOf(t, ids...)
		onlyTheStack(t)
	}

	t.Run("rootlesskit", func(t *testing.T) {
		runs := startBoth(t, "rl-kit-")
		old := kitPid(t)
		holder := kitChild(t)
		oldNS := outerUserNS(holder)
		kill9(t, []int{old})
		// Its child, which holds the namespaces, and containerd follow it (parent-death signal).
		waitGone(t, holder)
		r := rlRun(t, 0, "list")
		if !strings.Contains(r.stderr, "rootlesskit of this home had died") {
			t.Errorf("the next command did not say it killed what the dead kit left: %q", r.stderr)
		}
		if kitPid(t) == old {
			t.Fatalf("no fresh rootlesskit after the old one (%d) was killed", old)
		}
		if left := inUserNS(oldNS); len(left) > 0 {
			t.Errorf("processes left in the dead kit's namespaces: %v", left)
		}
		check(t, runs)
	})

	t.Run("crash", func(t *testing.T) {
		runs := startBoth(t, "rl-crash-")
		old := kitPid(t)
		oldNS := outerUserNS(kitChild(t))
		// Everything of the user in the kit's namespaces (workloads included), and the kit.
		pids := inUserNS(oldNS)
		for _, p := range userProcesses(rl.uid, rl.dir) {
			pid, _ := strconv.Atoi(strings.Fields(p)[0])
			pids = append(pids, pid)
		}
		kill9(t, append(pids, old))
		if left := userProcesses(rl.uid, rl.dir); len(left) > 0 {
			t.Fatalf("processes of the home survive the crash: %v", left)
		}
		if left := inUserNS(oldNS); len(left) > 0 {
			t.Fatalf("processes of the kit's namespaces survive the crash: %v", left)
		}
		rlRun(t, 0, "list")
		if kitPid(t) == old {
			t.Fatalf("no fresh rootlesskit after the crash")
		}
		check(t, runs)
	})
}

// TestRootlessSystemStop: with a run active, system stop refuses; --force stops the runs
// (their ends recorded), buildkitd and rootlesskit, and leaves no process of the home; the
// next command starts the stack again.
func TestRootlessSystemStop(t *testing.T) {
	rootless(t)
	runs := startBoth(t, "rl-stop-")
	r := rlRun(t, 125, "system", "stop")
	if !strings.Contains(r.stderr, "--force") || !strings.Contains(r.stderr, "ends with the stack") {
		t.Errorf("system stop with an active run: %q", r.stderr)
	}
	rlRun(t, 0, "system", "stop", "--force")
	if left := userProcesses(rl.uid, rl.dir); len(left) > 0 {
		t.Errorf("processes of the home after system stop --force: %v", left)
	}
	if st := rlSystemStatus(t); !strings.HasPrefix(st.Containerd.State, "not running") || st.Rootless.KitPid != 0 {
		t.Errorf("system status after stop: %+v", st)
	}
	for _, run := range runs {
		st := rlStatus(t, run.ID)
		// sleep as PID 1 ignores SIGTERM under runc (killed after the grace: 137); gVisor's
		// init passes it on (143).
		if st.State != "stopped" || st.ExitCode == nil || (*st.ExitCode != 137 && *st.ExitCode != 143) {
			t.Errorf("run %s after system stop --force: %+v", run.Name, st)
		}
	}
	rlRun(t, 0, "clean")
	var ids []string
	for _, run := range runs {
		ids = append(ids, run.ContainerID)
	}
	rlNothingOf(t, ids...)
}

// TestRootlessLimits: on a host where rootless limits cannot be applied (cgroup v1: these
// machines), --memory and --cpus are refused before anything starts, saying why and what
// would work, as is moatc.yaml's container.memory; no default pids limit is set; gVisor keeps
// an explicit pids limit (RLIMIT_NPROC in the Sentry), runc refuses it.
func TestRootlessLimits(t *testing.T) {
	rootless(t)
	st := rlSystemStatus(t)
	if st.Limits.Available {
		if os.Getenv("CI") == "true" {
			t.Fatalf("rootless limits are available here (%s): CI runs on cgroup v1 hosts, where they are not", st.Limits.Detail)
		}
		t.Skipf("rootless limits are available on this host (%s); never skipped in CI (cgroup v1)", st.Limits.Detail)
	}
	ws := rlWorkspace(t)
	for _, c := range []struct {
		rt    string
		flags []string
	}{{"gvisor", []string{"--memory", "64m"}}, {"runc", []string{"--memory", "64m"}}, {"gvisor", []string{"--cpus", "1"}}, {"runc", []string{"--pids-limit", "50"}}} {
		flags := c.flags
		r := rlExec(context.Background(), opts{}, busyboxRun(c.rt, flags, ws, "true")...)
		if r.code != 2 || !strings.Contains(r.stderr, flags[0]+" "+flags[1]+" cannot be applied") ||
			!strings.Contains(r.stderr, "cgroup v2") || !strings.Contains(r.stderr, "as root") {
			t.Errorf("run %v under %s: exit %d, stderr %q; want 2 and the reason", flags, c.rt, r.code, r.stderr)
		}
	}
	if err := os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("container:\n  memory: 512m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := rlExec(context.Background(), opts{}, busyboxRun("runc", nil, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "moatc.yaml: container.memory 512 MB cannot be applied") {
		t.Errorf("container.memory in moatc.yaml: exit %d, stderr %q", r.code, r.stderr)
	}
	os.Remove(filepath.Join(ws, "moatc.yaml"))
	for _, rt := range runtimes {
		out := rlRun(t, 0, busyboxRun(rt, []string{"-n", "rl-pids-" + rt}, ws, "true")...)
		raw := rlRun(t, 0, "status", "--json", "rl-pids-"+rt).stdout
		var rec struct {
			Spec struct {
				Pids int64 `json:"pids"`
			} `json:"spec"`
		}
		if err := json.Unmarshal([]byte(raw), &rec); err != nil || rec.Spec.Pids != 0 {
			t.Errorf("%s: the default pids limit is set rootless: %v %s (%s)", rt, err, raw, out.stderr)
		}
	}
	r = rlRun(t, 2, busyboxRun("gvisor", []string{"--pids-limit", "5"}, ws, "sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait; exit 0")...)
	if !strings.Contains(r.stderr, "can't fork") {
		t.Errorf("gVisor with --pids-limit 5 forked 8 children: %q", r.stderr)
	}
}

// TestRootlessSystemStatus: status says rootless, with rootlesskit's pid (the daemon moatc
// tracks), containerd's pid under it, the drivers, the snapshotter (probed once, cached in
// the home) and whether limits can be applied.
func TestRootlessSystemStatus(t *testing.T) {
	rootless(t)
	rlRun(t, 0, "list") // the stack runs
	st := rlSystemStatus(t)
	rs := st.Rootless
	if !rs.Enabled || rs.KitPid != kitPid(t) || rs.NetworkDriver != "slirp4netns" || rs.PortDriver != "builtin" || rs.StateDir != filepath.Join(rl.dir, "rootless") {
		t.Errorf("rootless: %+v (kit %d)", rs, kitPid(t))
	}
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", st.Containerd.Pid)); strings.TrimSpace(string(comm)) != "containerd" || !descends(st.Containerd.Pid, rs.KitPid) {
		t.Errorf("containerd's pid %d is %q, not a containerd under rootlesskit %d", st.Containerd.Pid, comm, rs.KitPid)
	}
	// This kernel (6.x) mounts overlayfs in a user namespace; the probe's result is kept.
	if st.Snapshotter.Name != "overlayfs" || !strings.Contains(st.Snapshotter.Reason, "probed") {
		t.Errorf("snapshotter: %+v", st.Snapshotter)
	}
	b, err := os.ReadFile(filepath.Join(rl.dir, "snapshotter.json"))
	if err != nil || !bytes.Contains(b, []byte(`"snapshotter":"overlayfs"`)) {
		t.Errorf("the probe's cache: %v %s", err, b)
	}
	if st.Limits.Available || !strings.Contains(st.Limits.Detail, "cgroup v1") {
		t.Errorf("limits on this cgroup v1 host: %+v", st.Limits)
	}
	// The runs use it: a run's root is an overlay.
	ws := rlWorkspace(t)
	r := rlRun(t, 0, busyboxRun("runc", nil, ws, "sh", "-c", "grep ' / ' /proc/mounts")...)
	if !strings.HasPrefix(r.stdout, "overlay / overlay") {
		t.Errorf("the run's root: %q", r.stdout)
	}
	rows := map[string]string{}
	for _, l := range strings.Split(rlRun(t, 0, "system", "status").stdout, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			rows[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	for k, want := range map[string]string{"rootless": "yes", "rootlesskit pid": strconv.Itoa(rs.KitPid), "network driver": "slirp4netns",
		"port driver": "builtin", "snapshotter": "overlayfs (probed", "limits": "not available: rootless moatc cannot set resource limits on a cgroup v1 host"} {
		if !strings.HasPrefix(rows[k], want) {
			t.Errorf("system status: %s: %q, want %q...", k, rows[k], want)
		}
	}
}
