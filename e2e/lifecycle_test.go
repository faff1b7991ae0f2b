package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestDetachLogsFollow(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "det-" + rt
			args := busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done; echo warn >&2; exit 4")
			r := mustRun(t, args...)
			id := strings.TrimSpace(r.stdout)
			if len(id) != 12 {
				t.Fatalf("run -d printed %q, want a 12-digit id", r.stdout)
			}
			l := mustRun(t, "logs", "-f", id[:6])
			if l.stdout != "line 1\nline 2\nline 3\nline 4\nline 5\n" || l.stderr != "warn\n" {
				t.Errorf("logs -f: stdout %q stderr %q", l.stdout, l.stderr)
			}
			st := status(t, name)
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 4 {
				t.Errorf("after the end: %+v", st)
			}
			tail := mustRun(t, "logs", "-n", "2", name)
			if tail.stdout != "line 5\n" || tail.stderr != "warn\n" {
				t.Errorf("logs -n 2: stdout %q stderr %q", tail.stdout, tail.stderr)
			}
		})
	}
}

func TestStopDeliversSIGTERM(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "trap-" + rt
			args := busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done")
			mustRun(t, args...)
			waitLog(t, name, "ready")
			mustRun(t, "stop", "-t", "20", name)
			st := status(t, name)
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 42 {
				t.Errorf("after stop: %+v", st)
			}
			if l := mustRun(t, "logs", name); !strings.Contains(l.stdout, "got-term") {
				t.Errorf("the trap did not run: %q", l.stdout)
			}
		})
	}
}

// TestStopKills: a workload that ignores SIGTERM is killed after the grace period (exit 137),
// and the foreground moatc exits with that code.
func TestStopKills(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "kill-" + rt
			args := busyboxRun(rt, []string{"-n", name}, ws, "sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done")
			fg := exec.Command(moatc, args...)
			if err := fg.Start(); err != nil {
				t.Fatal(err)
			}
			waitLog(t, name, "ready")
			mustRun(t, "stop", "-t", "1", name)
			err := fg.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 137 {
				t.Errorf("foreground moatc: %v, want exit 137", err)
			}
			if st := status(t, name); st.ExitCode == nil || *st.ExitCode != 137 {
				t.Errorf("after stop: %+v", st)
			}
		})
	}
}

func TestKill9OfForegroundMoatc(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "k9-" + rt
			args := busyboxRun(rt, []string{"-n", name}, ws, "sh", "-c", "echo ready; sleep 300")
			fg := exec.Command(moatc, args...)
			if err := fg.Start(); err != nil {
				t.Fatal(err)
			}
			waitLog(t, name, "ready")
			st := status(t, name)
			if st.State != "running" {
				t.Fatalf("state %q, want running", st.State)
			}
			fg.Process.Signal(syscall.SIGKILL)
			fg.Wait()
			// The next command reconciles: the run is failed and its task gone.
			var found bool
			for _, r := range list(t) {
				if r.Name == name {
					found = true
					if r.State != "failed" || !strings.Contains(r.Error, "gone") {
						t.Errorf("after kill -9: %+v", r)
					}
				}
			}
			if !found {
				t.Fatalf("run %s not listed", name)
			}
			for _, row := range ctrRows(t, "tasks", "ls") {
				if strings.Contains(row, st.ContainerID) {
					t.Errorf("task left running: %s", row)
				}
			}
			for _, row := range ctrRows(t, "containers", "ls") {
				if strings.Contains(row, st.ContainerID) {
					t.Errorf("container left: %s", row)
				}
			}
		})
	}
}

func TestParallelRuns(t *testing.T) {
	requireStack(t)
	for _, c := range []struct {
		rt string
		n  int
	}{{"runc", 10}, {"gvisor", 5}} {
		t.Run(c.rt, func(t *testing.T) {
			ws := workspace(t)
			var wg sync.WaitGroup
			ids := make([]string, c.n)
			errs := make([]string, c.n)
			for i := 0; i < c.n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					args := busyboxRun(c.rt, []string{"-d", "--json"}, ws, "sh", "-c", fmt.Sprintf("echo run-%d > /workspace/out-%d", i, i))
					r := moatcRun(t, opts{}, args...)
					if r.code != 0 {
						errs[i] = fmt.Sprintf("run %d: exit %d: %s", i, r.code, r.stderr)
						return
					}
					if j := strings.Index(r.stdout, `"id": "`); j >= 0 {
						ids[i] = r.stdout[j+7 : j+19]
					}
				}(i)
			}
			wg.Wait()
			for _, e := range errs {
				if e != "" {
					t.Error(e)
				}
			}
			seen := map[string]bool{}
			for i, id := range ids {
				if id == "" || seen[id] {
					t.Errorf("run %d: id %q missing or repeated", i, id)
				}
				seen[id] = true
				mustRun(t, "logs", "-f", id) // returns when the run has ended
				st := status(t, id)
				if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 0 {
					t.Errorf("run %d: %+v", i, st)
				}
				if b, err := os.ReadFile(fmt.Sprintf("%s/out-%d", ws, i)); err != nil || string(b) != fmt.Sprintf("run-%d\n", i) {
					t.Errorf("run %d wrote %q, %v", i, b, err)
				}
			}
		})
	}
}

func TestDestroyAndClean(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	mustRun(t, "run", "--no-sandbox", "-d", "-n", "dc-running", "--image", "busybox", ws, "--", "sleep", "300")
	mustRun(t, "run", "--no-sandbox", "-n", "dc-done", "--image", "busybox", ws, "--", "true")

	r := moatcRun(t, opts{}, "destroy", "dc-running")
	if r.code != 125 || !strings.Contains(r.stderr, "moatc stop dc-running") {
		t.Errorf("destroy of a running run: exit %d %q", r.code, r.stderr)
	}
	mustRun(t, "destroy", "dc-done")
	if r := moatcRun(t, opts{}, "status", "dc-done"); r.code == 0 {
		t.Errorf("destroyed run still has a status")
	}
	running := status(t, "dc-running")

	// A container moatc made whose record is gone (as after a crash): clean finds it by label.
	mustRun(t, "run", "--no-sandbox", "-d", "-n", "dc-orphan", "--image", "busybox", ws, "--", "sleep", "300")
	orphan := status(t, "dc-orphan")
	// Kill its supervisor and delete its record by hand: only labels are left to find it by.
	sup, _ := os.ReadFile(home + "/runs/" + orphan.ID + "/metadata.json")
	if i := strings.Index(string(sup), `"pid": `); i < 0 {
		t.Fatalf("no supervisor in %s", sup)
	}
	killSupervisor(t, orphan.ID)
	os.RemoveAll(home + "/runs/" + orphan.ID)

	dry := mustRun(t, "clean", "--dry-run")
	if !strings.Contains(dry.stdout, "would remove container "+orphan.ContainerID) {
		t.Errorf("clean --dry-run: %q", dry.stdout)
	}
	if !strings.Contains(strings.Join(ctrRows(t, "containers", "ls"), "\n"), orphan.ContainerID) {
		t.Errorf("--dry-run removed the container")
	}
	c := mustRun(t, "clean")
	if !strings.Contains(c.stdout, "removed container "+orphan.ContainerID) {
		t.Errorf("clean: %q", c.stdout)
	}
	left := strings.Join(ctrRows(t, "containers", "ls"), "\n")
	if strings.Contains(left, orphan.ContainerID) {
		t.Errorf("orphan container left: %s", left)
	}
	if !strings.Contains(left, running.ContainerID) {
		t.Errorf("clean removed an active run's container")
	}
	if strings.Contains(strings.Join(ctrRows(t, "snapshots", "--snapshotter", "overlayfs", "ls"), "\n"), orphan.ContainerID) {
		t.Errorf("orphan snapshot left")
	}
	mustRun(t, "destroy", "--force", "dc-running")
	if strings.Contains(strings.Join(ctrRows(t, "containers", "ls"), "\n"), running.ContainerID) {
		t.Errorf("destroy --force left the container")
	}
}

func killSupervisor(t *testing.T, id string) {
	t.Helper()
	b, err := os.ReadFile(home + "/runs/" + id + "/metadata.json")
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	s := string(b)
	i := strings.Index(s, `"supervisor": {`)
	if i < 0 {
		t.Fatalf("no supervisor: %s", s)
	}
	fmt.Sscanf(s[strings.Index(s[i:], `"pid": `)+i+7:], "%d", &pid)
	if pid <= 1 {
		t.Fatalf("bad supervisor pid in %s", s)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for j := 0; j < 100 && syscall.Kill(pid, 0) == nil; j++ {
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLog waits until a run's log has a line containing want.
func waitLog(t *testing.T, ref, want string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		r := moatcRun(t, opts{}, "logs", ref)
		if strings.Contains(r.stdout, want) {
			return
		}
		if r.code == 0 {
			if st := status(t, ref); st.State != "running" && st.State != "created" {
				t.Fatalf("run %s ended (%s, %s) before printing %q", ref, st.State, st.Error, want)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("run %s never printed %q", ref, want)
}

// TestSignalsForwarded: SIGINT and SIGTERM sent to a foreground moatc reach the workload.
func TestSignalsForwarded(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
			t.Run(fmt.Sprintf("%s/%s", rt, sig), func(t *testing.T) {
				ws := workspace(t)
				name := fmt.Sprintf("sig-%s-%d", rt, sig)
				args := busyboxRun(rt, []string{"-n", name}, ws, "sh", "-c", "trap 'echo got-int; exit 41' INT; trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done")
				fg := exec.Command(moatc, args...)
				if err := fg.Start(); err != nil {
					t.Fatal(err)
				}
				waitLog(t, name, "ready")
				fg.Process.Signal(sig)
				err := fg.Wait()
				want := 41
				if sig == syscall.SIGTERM {
					want = 42
				}
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != want {
					t.Errorf("moatc exited %v, want %d", err, want)
				}
			})
		}
	}
}

// TestClosedStdoutDoesNotEndTheRun: `moatc run -- seq ... | head -1` once killed moatc with
// SIGPIPE and left the run recorded running with seq blocked. The run goes to its real end:
// recorded stopped 0, its whole output in the log.
func TestClosedStdoutDoesNotEndTheRun(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "sigpipe-" + rt
			args := strings.Join(append([]string{moatc}, busyboxRun(rt, []string{"-n", name}, ws, "seq", "1", "200000")...), " ")
			out, err := exec.Command("bash", "-c", "set -o pipefail; "+args+" 2>/dev/null | head -1").Output()
			if err != nil || string(out) != "1\n" {
				t.Fatalf("moatc run | head -1: %v, output %q", err, out)
			}
			st := status(t, name)
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 0 {
				t.Fatalf("the run is %s (exit %v, %s), want stopped 0", st.State, st.ExitCode, st.Error)
			}
			logs := mustRun(t, "logs", name).stdout
			if n := strings.Count(logs, "\n"); n != 200000 || !strings.HasSuffix(logs, "\n200000\n") {
				t.Errorf("the log has %d lines, want all 200000", n)
			}
		})
	}
}

// TestStopBeforeStart: `moatc stop` of a run still being created once printed its id while the
// run went on to start. Now the workload never starts: the run is recorded stopped (143), and
// `moatc run` exits 143 without the workload's output.
func TestStopBeforeStart(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	for attempt := 1; ; attempt++ {
		name := fmt.Sprintf("early-stop-%d", attempt)
		cmd := exec.Command(moatc, busyboxRun("gvisor", []string{"-n", name}, ws, "echo", "workload-started")...)
		var out strings.Builder
		cmd.Stdout = &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		caught := false
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if r := moatcRun(t, opts{}, "status", "--json", name); r.code == 0 && strings.Contains(r.stdout, `"state": "created"`) {
				caught = true
				break
			} else if r.code == 0 && !strings.Contains(r.stdout, `"state": "created"`) {
				break // started already: too late for this attempt
			}
			time.Sleep(5 * time.Millisecond)
		}
		if !caught {
			cmd.Wait()
			if attempt == 10 {
				t.Fatal("never saw a run in state created in 10 attempts")
			}
			continue
		}
		stop := moatcRun(t, opts{}, "stop", name)
		err := cmd.Wait()
		if stop.code != 0 {
			t.Fatalf("stop: exit %d %s", stop.code, stop.stderr)
		}
		st := status(t, name)
		if st.State == "stopped" && st.ExitCode != nil && *st.ExitCode == 0 && strings.Contains(out.String(), "workload-started") {
			// The task had started between the status and the stop: it ended normally.
			if attempt == 10 {
				t.Fatal("the run started before every stop in 10 attempts")
			}
			continue
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 143 || strings.Contains(out.String(), "workload-started") {
			t.Errorf("moatc run: %v, output %q; want exit 143 and no output", err, out.String())
		}
		if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 143 || !strings.Contains(st.Error, "before its workload started") {
			t.Errorf("record: %s exit %v %q", st.State, st.ExitCode, st.Error)
		}
		return
	}
}

// TestContainerdRestartKeepsRuns: a containerd restart (`system stop --force`, an upgrade, a
// crash) was recorded as every running workload exiting 255, and the tasks, still running in
// their shims, were killed later. Now the supervisor waits for containerd to answer again,
// follows the task anew and records its real exit; the output goes on being recorded.
func TestContainerdRestartKeepsRuns(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	for _, rt := range runtimes {
		mustRun(t, busyboxRun(rt, []string{"-d", "-n", "restart-" + rt, "--network", "none"}, ws,
			"sh", "-c", "for i in $(seq 1 8); do echo line-$i; sleep 1; done; exit 7")...)
	}
	time.Sleep(time.Second)
	mustRun(t, "system", "stop", "--force")
	time.Sleep(2 * time.Second)
	mustRun(t, "system", "start")
	for _, rt := range runtimes {
		name := "restart-" + rt
		deadline := time.Now().Add(60 * time.Second)
		st := status(t, name)
		for st.State != "stopped" && st.State != "failed" && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
			st = status(t, name)
		}
		if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 7 {
			t.Errorf("%s: after a containerd restart the run is %s (exit %v, %q), want stopped 7", rt, st.State, st.ExitCode, st.Error)
		}
		logs := mustRun(t, "logs", name).stdout
		for i := 1; i <= 8; i++ {
			if !strings.Contains(logs, fmt.Sprintf("line-%d\n", i)) {
				t.Errorf("%s: line-%d missing from the log:\n%s", rt, i, logs)
				break
			}
		}
	}
}

// TestDetachedRunOutlivesItsSupervisor: a detached run died with its `moatc _supervise`
// process (the next reconcile killed the workload). Now the next command hands it to a new
// supervisor: the output goes on into the log, the run's proxy is served again, and the real
// exit code is recorded.
func TestDetachedRunOutlivesItsSupervisor(t *testing.T) {
	requireStack(t)
	port := serveHost(t, "host")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "adopted-" + rt
			mustRun(t, busyboxRun(rt, []string{"-d", "-n", name, "--host-port", fmt.Sprint(port)}, ws, "sh", "-c",
				fmt.Sprintf("for i in $(seq 1 8); do echo line-$i; wget -q -O /dev/null http://moatc-host:%d/ && echo fetched-$i; sleep 1; done; exit 5", port))...)
			waitLog(t, name, "fetched-2")
			st := status(t, name)
			killSupervisor(t, st.ID)
			mustRun(t, "list") // the reconcile that adopts it
			deadline := time.Now().Add(60 * time.Second)
			for st = status(t, name); st.State == "running" && time.Now().Before(deadline); st = status(t, name) {
				time.Sleep(200 * time.Millisecond)
			}
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 5 {
				t.Fatalf("after its supervisor was killed the run is %s (exit %v, %q), want stopped 5", st.State, st.ExitCode, st.Error)
			}
			logs := mustRun(t, "logs", name).stdout
			for _, want := range []string{"line-1\n", "line-8\n", "fetched-8\n"} {
				if !strings.Contains(logs, want) {
					t.Errorf("%q missing from the log (the proxy and the output must go on):\n%s", want, logs)
				}
			}
		})
	}
}

// TestHungShimDoesNotHangCommands: a run whose supervisor is gone and whose shim does not
// answer (stopped with SIGSTOP here) must not hold up every command: `moatc list` gives up on
// it within its budget, says so, and lists the runs; the run is left alone (a slow shim is not
// a dead one), and once the shim answers again the next command hands the run to a new
// supervisor, which records its real end.
func TestHungShimDoesNotHangCommands(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	name := "hung-shim"
	id := strings.TrimSpace(mustRun(t, busyboxRun("runc", []string{"-d", "-n", name, "--network", "none"}, ws, "sh", "-c",
		"i=0; while [ $i -lt 60 ]; do echo beat-$i; i=$((i+1)); sleep 0.5; done; exit 6")...).stdout)
	waitLog(t, name, "beat-1\n")
	shim := shimOf(t, "moatc-"+id)
	if err := syscall.Kill(shim, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(shim, syscall.SIGCONT)
	killSupervisor(t, id)

	r := moatcRun(t, opts{}, "list")
	if r.code != 0 || !strings.Contains(r.stdout, name) || !strings.Contains(r.stderr, "could not be cleaned up yet") {
		t.Fatalf("list with a hung shim: exit %d\nstdout %s\nstderr %s", r.code, r.stdout, r.stderr)
	}
	if st := status(t, name); st.State != "running" {
		t.Fatalf("the run of the hung shim was recorded %s (%q): a slow shim is not a dead one", st.State, st.Error)
	}
	syscall.Kill(shim, syscall.SIGCONT)
	deadline := time.Now().Add(90 * time.Second)
	st := status(t, name) // adopts it
	for st.State == "running" && time.Now().Before(deadline) {
		time.Sleep(300 * time.Millisecond)
		st = status(t, name)
	}
	if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 6 {
		t.Fatalf("after the shim answered again the run is %s (exit %v, %q), want stopped 6", st.State, st.ExitCode, st.Error)
	}
	if logs := mustRun(t, "logs", name).stdout; !strings.HasSuffix(logs, "beat-59\n") {
		t.Errorf("the log does not end with beat-59:\n%s", tailOf(logs))
	}
}

// shimOf returns the pid of the shim process serving container id.
func shimOf(t *testing.T, id string) int {
	t.Helper()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		for i, a := range args {
			if a == "-id" && i+1 < len(args) && args[i+1] == id {
				return pid
			}
		}
	}
	t.Fatalf("no shim serves %s", id)
	return 0
}
