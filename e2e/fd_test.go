package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestDaemonInheritsNoStrayFD: a file moatc's caller left open (a flock(1) lock, say) is not
// held by the containerd moatc starts; it would keep the lock for the daemon's whole life.
func TestDaemonInheritsNoStrayFD(t *testing.T) {
	requireStack(t)
	h, err := os.MkdirTemp("/tmp", "mfd-") // its own home: a daemon started now, for this test
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "MOATC_HOME="+h)
	defer func() {
		stop := exec.Command(moatc, "system", "stop", "--force")
		stop.Env = env
		if out, err := stop.CombinedOutput(); err != nil {
			t.Errorf("system stop: %v: %s", err, out)
		}
		os.RemoveAll(h)
	}()
	held, err := os.Create(filepath.Join(h, "held"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	cmd := exec.Command(moatc, "system", "start", "--json")
	cmd.Env, cmd.ExtraFiles = env, []*os.File{held} // fd 3 of moatc, not close-on-exec
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("system start: %v: %s", err, out)
	}
	var st struct{ Pid int }
	if err := json.Unmarshal(out, &st); err != nil || st.Pid == 0 {
		t.Fatalf("system start --json: %v %q", err, out)
	}
	fds, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(st.Pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if target, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(st.Pid), "fd", fd.Name())); target == held.Name() {
			t.Fatalf("containerd (pid %d) holds moatc's inherited fd %s -> %s", st.Pid, fd.Name(), target)
		}
	}
}
