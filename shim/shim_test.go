package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"
	"gvisor.dev/gvisor/pkg/shim/v1/proc"
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

func newTestFixer() (*exitFixer, chan runc.Exit) {
	f := &exitFixer{
		changed: make(chan struct{}),
		reaped:  map[int]reapedExit{},
		inits:   map[string]sandboxPid{},
	}
	reaps := make(chan runc.Exit)
	go f.record(reaps)
	return f, reaps
}

func TestExitFixerSubstitutesReapedStatus(t *testing.T) {
	f, reaps := newTestFixer()
	defer close(reaps)
	f.track("c1", 4242, time.Now())

	in, out := make(chan proc.Exit), make(chan proc.Exit, 3)
	go f.forward(in, out)

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

func TestExitFixerIgnoresOlderProcessWithSamePid(t *testing.T) {
	f, reaps := newTestFixer()
	defer close(reaps)
	reaps <- runc.Exit{Pid: 99, Status: 1, Timestamp: time.Now().Add(-time.Second)}
	f.track("c2", 99, time.Now())
	reaps <- runc.Exit{Pid: 99, Status: 255, Timestamp: time.Now()}
	if st, ok := f.sandboxStatus("c2"); !ok || st != 255 {
		t.Errorf("sandboxStatus = %d, %v; want 255", st, ok)
	}
}
