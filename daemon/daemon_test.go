package daemon

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatc/moatc/state"
)

// A pid file whose process is gone, and whose pid now belongs to another process (as after a
// reboot), names no daemon: Pid says so and Stop signals nothing.
func TestStalePidFileIsNotTheDaemon(t *testing.T) {
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	dir := t.TempDir()
	p := &Process{Name: "containerd", Dir: dir, Binary: "/opt/moatc/bin/containerd"}
	pr, err := state.ProcessOf(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		content string
		alive   bool
	}{
		{fmt.Sprintf("%d %d\n", pr.Pid, pr.Start), true},
		{fmt.Sprintf("%d %d\n", pr.Pid, pr.Start-1), false}, // the pid, reused by another process
		{fmt.Sprintf("%d\n", pr.Pid), false},                // an older pid file: sleep is not containerd
		{"garbage\n", false},
		{"", false},
	} {
		os.WriteFile(filepath.Join(dir, "containerd.pid"), []byte(c.content), 0o600)
		if _, ok := p.Pid(); ok != c.alive {
			t.Errorf("pid file %q: alive %v, want %v", c.content, ok, c.alive)
		}
	}
	// Stop with the stale file leaves the other process alone.
	os.WriteFile(filepath.Join(dir, "containerd.pid"), fmt.Appendf(nil, "%d %d\n", pr.Pid, pr.Start-1), 0o600)
	if err := p.Stop(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if !pr.Alive() {
		t.Fatal("Stop signalled a process that only shares the stale pid")
	}
	// The daemon's own pid file, as Start writes it, names it.
	b, err := pidFile(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "containerd.pid"), b, 0o600)
	if pid, ok := p.Pid(); !ok || pid != other.Process.Pid {
		t.Errorf("Pid after pidFile: %d %v", pid, ok)
	}
}
