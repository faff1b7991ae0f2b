package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	runc "github.com/containerd/go-runc"
	"gvisor.dev/gvisor/pkg/shim/v1/proc"
	"gvisor.dev/gvisor/pkg/shim/v1/runsc"
)

func writeSpec(t *testing.T, doc string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func readDoc(t *testing.T, bundle string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

func TestMarkUntypedAsSandbox(t *testing.T) {
	bundle := writeSpec(t, `{"ociVersion":"1.2.0","process":{"args":["sh"]},"annotations":{"a":"b"},"x-unknown":{"kept":true}}`)
	root, err := markUntypedAsSandbox(bundle)
	if err != nil || !root {
		t.Fatalf("untyped spec: root=%v err=%v, want root", root, err)
	}
	doc := readDoc(t, bundle)
	ann := doc["annotations"].(map[string]any)
	if ann["io.kubernetes.cri.container-type"] != "sandbox" || ann["a"] != "b" {
		t.Errorf("annotations = %v", ann)
	}
	if doc["x-unknown"] == nil || doc["process"] == nil {
		t.Errorf("fields lost: %v", doc)
	}

	for typ, wantRoot := range map[string]bool{"sandbox": true, "container": false} {
		orig := `{"annotations":{"io.kubernetes.cri.container-type":"` + typ + `"}}`
		bundle := writeSpec(t, orig)
		root, err := markUntypedAsSandbox(bundle)
		if err != nil || root != wantRoot {
			t.Errorf("type %s: root=%v err=%v, want %v", typ, root, err, wantRoot)
		}
		if b, _ := os.ReadFile(filepath.Join(bundle, "config.json")); string(b) != orig {
			t.Errorf("type %s: spec rewritten: %s", typ, b)
		}
	}
}

func newTestSandboxes() (*sandboxes, chan runc.Exit) {
	s := newSandboxes()
	reaps := make(chan runc.Exit)
	go s.record(reaps)
	return s, reaps
}

func TestForwardSubstitutesReapedStatus(t *testing.T) {
	s, reaps := newTestSandboxes()
	defer close(reaps)
	s.track("c1", 4242, time.Now())

	in, out := make(chan proc.Exit), make(chan proc.Exit, 3)
	go s.forward(in, out)

	// A real status passes unchanged; so does 128 for an unknown id.
	in <- proc.Exit{ID: "c1", Status: 7}
	in <- proc.Exit{ID: "other", Status: waitFailedStatus}
	if e := <-out; e.Status != 7 {
		t.Errorf("status 7 became %d", e.Status)
	}
	if e := <-out; e.Status != waitFailedStatus {
		t.Errorf("unknown id: status %d", e.Status)
	}

	// 128 for a tracked container waits for the reaper and takes its status.
	in <- proc.Exit{ID: "c1", Status: waitFailedStatus}
	time.Sleep(50 * time.Millisecond)
	reaps <- runc.Exit{Pid: 4242, Status: 3, Timestamp: time.Now()}
	select {
	case e := <-out:
		if e.Status != 3 || e.ID != "c1" {
			t.Errorf("got %+v, want c1 status 3", e)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("exit not forwarded")
	}
	close(in)
}

func TestWaitExitIgnoresOlderProcessWithSamePid(t *testing.T) {
	s, reaps := newTestSandboxes()
	defer close(reaps)
	reaps <- runc.Exit{Pid: 99, Status: 1, Timestamp: time.Now().Add(-time.Second)}
	s.track("c2", 99, time.Now())
	if s.exited("c2") {
		t.Error("exited before its sandbox was reaped")
	}
	reaps <- runc.Exit{Pid: 99, Status: 255, Timestamp: time.Now()}
	if st, ok := s.waitExit("c2", time.Second); !ok || st != 255 {
		t.Errorf("waitExit = %d, %v; want 255", st, ok)
	}
	if !s.exited("c2") {
		t.Error("not exited after its sandbox was reaped")
	}
}

func TestParentOf(t *testing.T) {
	ppid, err := parentOf(os.Getpid())
	if err != nil || ppid != os.Getppid() {
		t.Errorf("parentOf(self) = %d, %v; want %d", ppid, err, os.Getppid())
	}
	if _, err := parentOf(-1); err == nil {
		t.Error("parentOf(-1) succeeded")
	}
}

func TestRunscSubcommand(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		sub  string
		args []string
		ok   bool
	}{
		{[]string{"runsc", "--root=/r", "--log=/l", "--log-format=json", "--platform=systrap", "wait", "c"}, "wait", []string{"c"}, true},
		{[]string{"runsc", "--root=/r", "kill", "--all", "c", "9"}, "kill", []string{"--all", "c", "9"}, true},
		{[]string{"runsc", "state", "c"}, "state", []string{"c"}, true},
		{[]string{"runsc", "--root", "/r", "state", "c"}, "", nil, false},
		{[]string{"runsc", "--root=/r"}, "", nil, false},
		{[]string{"runsc"}, "", nil, false},
	} {
		sub, args, ok := runscSubcommand(tc.argv)
		if sub != tc.sub || ok != tc.ok || strings.Join(args, " ") != strings.Join(tc.args, " ") {
			t.Errorf("%q: got %q %q %v", tc.argv, sub, args, ok)
		}
	}
}

// passMonitor stands for the real monitor: it never runs anything and counts
// the commands passed to it.
type passMonitor struct{ started []string }

func (p *passMonitor) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	p.started = append(p.started, strings.Join(cmd.Args[1:], " "))
	ec := make(chan runc.Exit, 1)
	ec <- runc.Exit{Status: 42}
	return ec, nil
}

func (p *passMonitor) Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error) {
	return (<-ec).Status, nil
}

func runVia(m *runscMonitor, args ...string) (status int, stdout, stderr string) {
	var o, e bytes.Buffer
	cmd := exec.Command("runsc", append([]string{"--root=/r", "--log-format=json"}, args...)...)
	cmd.Stdout, cmd.Stderr = &o, &e
	ec, err := m.Start(cmd)
	if err != nil {
		panic(err)
	}
	status, _ = m.Wait(cmd, ec)
	return status, o.String(), e.String()
}

func TestRunscMonitorAnswers(t *testing.T) {
	s, reaps := newTestSandboxes()
	defer close(reaps)
	next := &passMonitor{}
	m := newRunscMonitor(next, s)

	// Our own child stands in for the sandbox, so that watch accepts it.
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	pid := child.Process.Pid
	s.track("root", pid, time.Now())

	// Created, not started: state and kill go to runsc.
	if st, _, _ := runVia(m, "state", "root"); st != 42 {
		t.Errorf("state before start answered")
	}
	if st, _, _ := runVia(m, "kill", "root", "15"); st != 42 {
		t.Errorf("kill of a live sandbox answered")
	}

	s.update("root", func(sb *sandbox) { sb.started = true })
	if !s.watch("root") {
		t.Fatal("own child not watched")
	}
	if st, out, _ := runVia(m, "state", "root"); st != 0 || !strings.Contains(out, `"status":"running"`) {
		t.Errorf("state after start: %d %q", st, out)
	}
	s.update("root", func(sb *sandbox) { sb.paused = true })
	if st, _, _ := runVia(m, "state", "root"); st != 42 {
		t.Errorf("state of a paused container answered")
	}
	s.update("root", func(sb *sandbox) { sb.paused = false })

	// Unknown containers always go to runsc.
	runVia(m, "wait", "sub")
	runVia(m, "state", "sub")

	// wait blocks until the reaper reports the sandbox.
	type result struct {
		status int
		out    string
	}
	done := make(chan result)
	go func() {
		st, out, _ := runVia(m, "wait", "root")
		done <- result{st, out}
	}()
	select {
	case r := <-done:
		t.Fatalf("wait returned before the sandbox exited: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	reaps <- runc.Exit{Pid: pid, Status: 137, Timestamp: time.Now()}
	select {
	case r := <-done:
		var w waitResult
		if r.status != 0 || json.Unmarshal([]byte(r.out), &w) != nil || w.ExitStatus != 137 || w.ID != "root" {
			t.Errorf("wait: %+v", r)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("wait not answered")
	}

	if st, out, _ := runVia(m, "state", "root"); st != 0 || !strings.Contains(out, `"status":"stopped"`) {
		t.Errorf("state after exit: %d %q", st, out)
	}
	if st, _, errOut := runVia(m, "kill", "--all", "root", "9"); st == 0 || !strings.Contains(errOut, "not running") {
		t.Errorf("kill after exit: %d %q", st, errOut)
	}

	want := []string{
		"--root=/r --log-format=json state root",
		"--root=/r --log-format=json kill root 15",
		"--root=/r --log-format=json state root",
		"--root=/r --log-format=json wait sub",
		"--root=/r --log-format=json state sub",
	}
	if strings.Join(next.started, "\n") != strings.Join(want, "\n") {
		t.Errorf("passed to runsc:\n%s\nwant:\n%s", strings.Join(next.started, "\n"), strings.Join(want, "\n"))
	}
}

func TestRunscMonitorWaitNotOurChild(t *testing.T) {
	s, reaps := newTestSandboxes()
	defer close(reaps)
	next := &passMonitor{}
	m := newRunscMonitor(next, s)
	// pid 1 is alive and not our child: its exit would never reach us.
	s.track("foreign", 1, time.Now())
	s.update("foreign", func(sb *sandbox) { sb.started = true })
	if st, _, _ := runVia(m, "wait", "foreign"); st != 42 {
		t.Error("wait answered for a sandbox that is not our child")
	}
	if st, _, _ := runVia(m, "state", "foreign"); st != 42 {
		t.Error("state answered for a sandbox that is not our child")
	}
}

func TestStopAfterDelete(t *testing.T) {
	bundle := t.TempDir()
	st := runsc.State{Rootfs: filepath.Join(bundle, "rootfs")}
	if err := st.Save(bundle); err != nil {
		t.Fatal(err)
	}
	markDeleted(bundle)
	t.Chdir(bundle)
	// No inner manager: delegating to gVisor's Stop (runsc delete) would panic.
	m := &manager{}
	status, err := m.Stop(namespaces.WithNamespace(context.Background(), "t"), "c")
	if err != nil || status.ExitStatus != 137 {
		t.Errorf("Stop = %+v, %v", status, err)
	}
}
