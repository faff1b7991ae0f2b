package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKill9StormLeavesNoSandbox: 16 gVisor runs whose moatc is killed with -9 while the run
// is being created (most of them as their shim is creating the sandbox: containerd then
// gives up on the task and forgets it, but the sandbox comes up all the same). The next
// command leaves no runsc process, shim or runsc state of them, and `moatc clean` none of
// anything no active run accounts for; a run of the same home started before is untouched.
func TestKill9StormLeavesNoSandbox(t *testing.T) {
	requireStack(t)
	ws := workspace(t)

	// A live run, started before: nothing of it may be touched.
	live := strings.TrimSpace(mustRun(t, busyboxRun("gvisor", []string{"-d", "-n", "storm-live"}, ws, "sleep", "300")...).stdout)
	liveCtr := "moatc-" + live
	t.Cleanup(func() { moatcRun(t, opts{}, "destroy", "--force", live) })
	if st := status(t, live); st.State != "running" {
		t.Fatalf("live run: %+v", st)
	}
	livePids := leakProcsOf(liveCtr)
	if len(livePids) < 3 {
		t.Fatalf("live run: want its shim, sandbox and gofer, found %v", livePids)
	}
	// The home's runsc root, as the live sandbox was given it: one of its own, not runsc's
	// default shared by every home.
	root := leakRunscRoot(t, livePids)
	if strings.HasPrefix(root, "/run/containerd/runsc") {
		t.Errorf("runsc root %s is runsc's default, shared by every home", root)
	}
	if b, err := os.ReadFile(filepath.Join(root, "home")); err != nil || strings.TrimSpace(string(b)) != home {
		t.Errorf("runsc root %s does not name its home %s: %q %v", root, home, b, err)
	}

	// The storm.
	const n = 16
	cmds := make([]*exec.Cmd, n)
	for i := range cmds {
		cmds[i] = exec.Command(moatc, busyboxRun("gvisor", []string{"-n", fmt.Sprintf("storm-%02d", i)}, ws, "sleep", "100")...)
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	killedAt := make([]string, n) // the run's state when its moatc was killed
	var wg sync.WaitGroup
	up := make([]chan struct{}, n) // closed when the run's shim (i%4 1, 2) or sandbox (3) is up
	for i := range cmds {
		up[i] = make(chan struct{})
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			// A quarter are killed on a timer (often before the task exists); a half once
			// their shim is up, at 0 or 150 ms into the sandbox's creation; a quarter 80 to
			// 800 ms after their sandbox process appears (often between task create and
			// start: containerd then holds a task in state created that gVisor cannot kill).
			switch i % 4 {
			case 0:
				time.Sleep(time.Duration(150+40*i) * time.Millisecond)
			default:
				select {
				case <-up[i]:
					d := []time.Duration{0, 0, 150, 0}[i%4]
					if i%4 == 3 {
						d = []time.Duration{80, 250, 500, 800}[i/4]
					}
					time.Sleep(d * time.Millisecond)
				case <-time.After(8 * time.Second):
				}
			}
			killedAt[i] = leakRunState(fmt.Sprintf("storm-%02d", i))
			cmds[i].Process.Kill() // SIGKILL
			cmds[i].Wait()
		}(i)
	}
	// Watch for each run's shim and sandbox.
	done := make(chan struct{})
	go func() {
		seen := make([]bool, n)
		for {
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			ids := leakRunIDs()
			shims, sandboxes := leakGVisorProcs()
			for i := range seen {
				id := "moatc-" + ids[fmt.Sprintf("storm-%02d", i)]
				if !seen[i] && (i%4 != 3 && shims[id] || i%4 == 3 && sandboxes[id]) {
					seen[i] = true
					close(up[i])
				}
			}
		}
	}()
	wg.Wait()
	close(done)
	counts := map[string]int{}
	for _, s := range killedAt {
		counts[s]++
	}
	t.Logf("16 moatc killed within %v; run states at the kill: %v", time.Since(start).Round(time.Millisecond), counts)
	if counts["created"] < n/2 {
		t.Errorf("only %d of %d runs were killed while created", counts["created"], n)
	}

	// Before the next command: what the storm left (the bug: all of it stayed for good).
	storm := leakStormIDs()
	left := leakResidue(root, storm)
	t.Logf("left by the storm before the next command: %d runsc processes/shims, %d runsc state entries", len(left.procs), len(left.state))
	created := 0
	for _, row := range ctrRows(t, "tasks", "ls") { // containerd's own client: no reconcile
		if f := strings.Fields(row); len(f) == 3 && f[2] == "CREATED" {
			created++
		}
	}
	t.Logf("tasks containerd holds in created state (moatc killed between task create and start): %d", created)
	if len(left.procs)+len(left.state) == 0 {
		t.Errorf("the storm left nothing to clean: its kills missed every sandbox's creation")
	}

	// The next command reconciles: nothing of the storm survives it.
	begin := time.Now()
	rs := list(t)
	t.Logf("moatc list (reconcile) took %v", time.Since(begin).Round(time.Millisecond))
	for _, r := range rs {
		if strings.HasPrefix(r.Name, "storm-") && r.Name != "storm-live" && (r.State == "created" || r.State == "running" || r.State == "stopping") {
			t.Errorf("after the next command, run %s is still %s", r.Name, r.State)
		}
	}
	leakCheckClean(t, "after the next command", root, storm, liveCtr, livePids)

	begin = time.Now()
	c := mustRun(t, "clean")
	t.Logf("moatc clean took %v", time.Since(begin).Round(time.Millisecond))
	if strings.Contains(c.stdout, liveCtr) || strings.Contains(c.stdout, "run "+live) {
		t.Errorf("clean removed something of the live run:\n%s", c.stdout)
	}
	for _, r := range list(t) {
		if strings.HasPrefix(r.Name, "storm-") && r.Name != "storm-live" {
			t.Errorf("after clean, run %s (%s) is still recorded", r.Name, r.State)
		}
	}
	leakCheckClean(t, "after clean", root, storm, liveCtr, livePids)
	if st := status(t, live); st.State != "running" {
		t.Errorf("the live run after the storm and clean: %+v", st)
	}

	// Its end leaves nothing either.
	mustRun(t, "stop", "-t", "1", live)
	mustRun(t, "clean")
	leakCheckClean(t, "after the live run stopped", root, storm, "", nil)
	if pids := leakProcsOf(liveCtr); len(pids) > 0 {
		t.Errorf("stopped live run left processes %v", pids)
	}
}

// leakCheckClean fails the test for any runsc process, shim, runsc state entry or cgroup of
// this home that is not the live run's (storm ids: also in runsc's shared root), and when a
// process of the live run is gone.
func leakCheckClean(t *testing.T, when, root string, storm []string, liveCtr string, livePids []int) {
	t.Helper()
	left := leakResidue(root, storm)
	for _, p := range left.procs {
		if liveCtr == "" || !strings.Contains(p, liveCtr) {
			t.Errorf("%s: process left: %s", when, p)
		}
	}
	for _, s := range left.state {
		if liveCtr == "" || !strings.Contains(s, liveCtr) {
			t.Errorf("%s: runsc state left: %s", when, s)
		}
	}
	for _, c := range left.cgroups {
		t.Errorf("%s: cgroup left: %s", when, c)
	}
	for _, p := range livePids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p)); err != nil {
			t.Errorf("%s: process %d of the live run is gone", when, p)
		}
	}
}

type leakLeft struct{ procs, state, cgroups []string }

// leakResidue lists the home's gVisor processes (shims serving its containerd, runsc
// processes mentioning the home or using its runsc root), its runsc state entries, and the
// storm runs' entries in runsc's shared root and their cgroups.
func leakResidue(root string, storm []string) leakLeft {
	var l leakLeft
	sock := filepath.Join(home, "containerd", "containerd.sock")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		line := strings.Join(argv, " ")
		base := filepath.Base(argv[0])
		isShim := base == "containerd-shim-runsc-v1" && strings.Contains(line, sock)
		isRunsc := strings.HasPrefix(base, "runsc") && (strings.Contains(line, home+"/") || strings.Contains(line, "--root="+root))
		if isShim || isRunsc {
			l.procs = append(l.procs, fmt.Sprintf("%d (ppid %d) %s ... %s", pid, leakPpid(pid), argv[0], argv[len(argv)-1]))
		}
	}
	for _, dir := range []string{filepath.Join(root, "moatc"), "/run/containerd/runsc/moatc"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			mine := dir == filepath.Join(root, "moatc")
			for _, id := range storm {
				mine = mine || strings.Contains(e.Name(), id)
			}
			if mine {
				l.state = append(l.state, filepath.Join(dir, e.Name()))
			}
		}
	}
	for _, id := range storm {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory/moatc", id)); err == nil {
			l.cgroups = append(l.cgroups, "/sys/fs/cgroup/memory/moatc/"+id)
		}
	}
	return l
}

// leakProcsOf lists the processes whose command line names container id.
func leakProcsOf(id string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && bytes.Contains(b, []byte(id)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// leakRunscRoot reads --root from a runsc process among pids.
func leakRunscRoot(t *testing.T, pids []int) string {
	t.Helper()
	for _, p := range pids {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		for _, a := range strings.Split(string(b), "\x00") {
			if strings.HasPrefix(a, "--root=") {
				return filepath.Dir(strings.TrimPrefix(a, "--root=")) // without the namespace
			}
		}
	}
	t.Fatalf("no runsc process with --root among %v", pids)
	return ""
}

// leakRunIDs maps run names to ids from the records on disk (no moatc command: each one
// reconciles, which would clean up before the test looks).
func leakRunIDs() map[string]string {
	out := map[string]string{}
	ents, _ := os.ReadDir(filepath.Join(home, "runs"))
	for _, e := range ents {
		var r runRecord
		if b, err := os.ReadFile(filepath.Join(home, "runs", e.Name(), "metadata.json")); err == nil && json.Unmarshal(b, &r) == nil {
			out[r.Name] = r.ID
		}
	}
	return out
}

// leakRunState is the recorded state of run name, "none" before it has a record.
func leakRunState(name string) string {
	id, ok := leakRunIDs()[name]
	if !ok {
		return "none"
	}
	var r runRecord
	if b, err := os.ReadFile(filepath.Join(home, "runs", id, "metadata.json")); err == nil && json.Unmarshal(b, &r) == nil {
		return r.State
	}
	return "unknown"
}

// leakStormIDs lists the container ids of the storm's runs.
func leakStormIDs() []string {
	var ids []string
	for name, id := range leakRunIDs() {
		if strings.HasPrefix(name, "storm-") && name != "storm-live" {
			ids = append(ids, "moatc-"+id)
		}
	}
	return ids
}

// leakGVisorProcs lists the container ids of the gVisor shims serving the home's
// containerd, and of the runsc sandboxes of the home.
func leakGVisorProcs() (shims, sandboxes map[string]bool) {
	shims, sandboxes = map[string]bool{}, map[string]bool{}
	sock := filepath.Join(home, "containerd", "containerd.sock")
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte(home+"/")) {
			continue
		}
		argv := strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
		switch {
		case filepath.Base(argv[0]) == "containerd-shim-runsc-v1" && bytes.Contains(b, []byte(sock)):
			for i, a := range argv {
				if a == "-id" && i+1 < len(argv) {
					shims[argv[i+1]] = true
				}
			}
		case argv[0] == "runsc-sandbox":
			sandboxes[argv[len(argv)-1]] = true
		}
	}
	return shims, sandboxes
}

func leakPpid(pid int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		if f := strings.Fields(string(b[i+1:])); len(f) > 1 {
			p, _ := strconv.Atoi(f[1])
			return p
		}
	}
	return 0
}

// TestShimSocketsRemoved: a run's shim, gVisor's or runc's, removes its socket from
// /run/containerd/s when it exits (gVisor's shim exits at once on its last Shutdown: moatc's
// shim removes the socket first).
func TestShimSocketsRemoved(t *testing.T) {
	requireStack(t)
	const dir = "/run/containerd/s"
	list := func() map[string]bool {
		m := map[string]bool{}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			m[e.Name()] = true
		}
		return m
	}
	for _, rt := range runtimes {
		before := list()
		args := append(append([]string{"run"}, sandboxArgs(rt)...), "--image", "busybox", t.TempDir(), "--", "true")
		if r := moatcRun(t, opts{}, args...); r.code != 0 {
			t.Fatalf("%s: exit %d: %s", rt, r.code, r.stderr)
		}
		// A shim may still be exiting when the run's moatc is done.
		var left []string
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			left = nil
			for n := range list() {
				if !before[n] {
					left = append(left, n)
				}
			}
			if len(left) == 0 || time.Now().After(deadline) {
				break
			}
		}
		if len(left) > 0 {
			t.Errorf("%s: the run's shim left its socket in %s: %v", rt, dir, left)
			for _, n := range left {
				os.Remove(filepath.Join(dir, n))
			}
		}
	}
}
