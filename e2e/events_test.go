package e2e

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type eventLine struct {
	Type     string `json:"type"`
	ID       string `json:"id"`
	Name     string `json:"name"`
	ExitCode *int   `json:"exit_code"`
}

// follower is a `moatc events` process in the background, its lines gathered.
type follower struct {
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []eventLine
	raw   []string
	done  chan struct{}
}

func followEvents(t *testing.T, args ...string) *follower {
	t.Helper()
	f := &follower{cmd: exec.Command(moatc, append([]string{"events", "--json"}, args...)...), done: make(chan struct{})}
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cmd.Process.Kill(); f.cmd.Wait() })
	go func() {
		defer close(f.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e eventLine
			err := json.Unmarshal(sc.Bytes(), &e)
			f.mu.Lock()
			f.raw = append(f.raw, sc.Text())
			if err == nil {
				f.lines = append(f.lines, e)
			}
			f.mu.Unlock()
		}
	}()
	return f
}

// of returns the events seen for run name, as "type" or "type(code)".
func (f *follower) of(name string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.lines {
		if e.Name != name {
			continue
		}
		s := e.Type
		if e.ExitCode != nil {
			s += "(" + strconv.Itoa(*e.ExitCode) + ")"
		}
		out = append(out, s)
	}
	return out
}

// waitFor polls until the run's events are want, or fails after the timeout.
func (f *follower) waitFor(t *testing.T, name string, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := strings.Join(f.of(name), " ")
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			f.mu.Lock()
			defer f.mu.Unlock()
			t.Fatalf("events of %s: %q, want %q\nall lines:\n%s", name, got, want, strings.Join(f.raw, "\n"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestEventsStream(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			name := "ev-" + rt
			all := followEvents(t)
			only := followEvents(t, "--filter", "run="+name, "--filter", "type=exited")
			time.Sleep(500 * time.Millisecond) // both followers are at the log's end
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{"-n", name}, workspace(t), "sh", "-c", "exit 3")...)
			if r.code != 3 {
				t.Fatalf("run exit %d, want 3; stderr: %s", r.code, r.stderr)
			}
			all.waitFor(t, name, "created started exited(3)")
			mustRun(t, "destroy", name)
			all.waitFor(t, name, "created started exited(3) removed")
			only.waitFor(t, name, "exited(3)")

			// Ctrl-C ends the stream with status 0.
			all.cmd.Process.Signal(syscall.SIGINT)
			select {
			case <-all.done:
			case <-time.After(10 * time.Second):
				t.Fatal("moatc events did not end on SIGINT")
			}
			if err := all.cmd.Wait(); err != nil {
				t.Errorf("moatc events after SIGINT: %v", err)
			}

			// The past, replayed: --since with an --until already reached exits by itself.
			out := mustRun(t, "events", "--json", "--since", "5m", "--until", "0s", "--filter", "run="+name).stdout
			var types []string
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				var e eventLine
				if err := json.Unmarshal([]byte(l), &e); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
				types = append(types, e.Type)
			}
			if got := strings.Join(types, " "); got != "created started exited removed" {
				t.Errorf("replayed %q", got)
			}
			// Human lines name the run and its code.
			out = mustRun(t, "events", "--since", "5m", "--until", "0s", "--filter", "run="+name, "--filter", "type=exited").stdout
			if !strings.Contains(out, "run exited") || !strings.Contains(out, "name="+name) || !strings.Contains(out, "exit_code=3") {
				t.Errorf("text output %q", out)
			}
		})
	}
}

func TestEventsBadFlags(t *testing.T) {
	requireStack(t)
	for _, args := range [][]string{
		{"events", "--filter", "type=died"},
		{"events", "--filter", "color=red"},
		{"events", "--since", "yesterday"},
		{"events", "--until", "-5m"},
	} {
		r := moatcRun(t, opts{}, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "moatc:") {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a reason", args, r.code, r.stderr)
		}
	}
}
