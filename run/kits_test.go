package run

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestHomeMarks(t *testing.T) {
	home := "/tmp/h/home"
	hm := marksOf(home)
	for _, argv := range [][]string{
		{"/opt/moatc/bin/containerd-shim-runc-v2", "-namespace", "moatc", "-id", "moatc-695c0333b026", "-address", home + "/containerd/containerd.sock"},
		{"/usr/bin/moatc", "--home", home, "--prefix", "/opt/moatc", "--address", "", "--namespace", "moatc", "_supervise", "695c0333b026"},
		{"/usr/bin/moatc", "_log", "max=0&path=%2Ftmp%2Fh%2Fhome%2Fruns%2F695c0333b026%2Foutput.log"},
		{"/opt/moatc/bin/containerd", "--config", home + "/containerd/config.toml"},
		{"/proc/self/exe", "--state-dir=" + home + "/rootless", "--net=slirp4netns"},
		{"runsc-gofer", "--root=" + hm.runsc + "moatc", "gofer"},
	} {
		if !hm.names(argv) {
			t.Errorf("%q is not taken for a process of %s", argv, home)
		}
	}
	for _, argv := range [][]string{
		{"/opt/moatc/bin/containerd-shim-runc-v2", "-address", "/tmp/h/home2/containerd/containerd.sock"},
		{"/usr/bin/moatc", "--home", "/tmp/h/home2", "_supervise", "x"},
		{"/usr/bin/moatc", "_log", "path=%2Ftmp%2Fh%2Fhome2%2Fruns%2Fx%2Foutput.log"},
		{"/usr/bin/moatc", "run", "-m", home + "/containerd:/x", "--", "true"}, // another home's run mounting this one
		{"runsc-gofer", "--root=" + marksOf("/tmp/h/home2").runsc + "moatc"},
		{"sleep", "1000"},
		{""},
	} {
		if hm.names(argv) {
			t.Errorf("%q is taken for a process of %s", argv, home)
		}
	}
	groups := map[userNS][]nsProcess{
		// a dead kit's: a supervisor and a workload
		1: {{pid: 10, argv: []string{"sleep", "1000"}}, {pid: 11, argv: []string{"moatc", "--home", home, "_supervise", "x"}}},
		// the live kit's: its namespaces' holder is there
		2: {{pid: 20, argv: []string{"moatc", "--home", home, "_supervise", "y"}}, {pid: 21, argv: []string{"/proc/self/exe", "--state-dir=" + home + "/rootless", "--net=slirp4netns"}}},
		// another home's, and something that is no moatc's
		3: {{pid: 30, argv: []string{"moatc", "--home", "/elsewhere", "_supervise", "z"}}},
		4: {{pid: 40, argv: []string{"sleep", "1000"}}},
		// a dead kit's gVisor sandbox, in a namespace of its own
		5: {{pid: 50, argv: []string{"runsc-sandbox", "--root=" + hm.runsc + "moatc"}}},
	}
	if got := staleKits(groups, home); !slices.Equal(got, []userNS{1, 5}) {
		t.Errorf("stale kits: %v, want [1 5]", got)
	}
}

// TestSweepStaleKits: processes in a user namespace and in one nested in it are found under the
// outer one, named by their arguments, and all killed; the host's are not touched.
func TestSweepStaleKits(t *testing.T) {
	home := t.TempDir()
	addr := filepath.Join(home, "containerd", "containerd.sock")
	// sh stays in the outer namespace (its arguments mark it as the home's shim); a nested
	// namespace holds another sleep.
	cmd := exec.Command("unshare", "--user", "--map-root-user", "sh", "-c", "unshare --user sleep 60 & sleep 60; true", "sh", "-address", addr)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	var outer userNS
	var pids []int
	nested := 0
	// Until the nested sleep is in its namespace: unshare itself starts in the outer one.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		outer, _ = outerUserNS(cmd.Process.Pid)
		pids = pidsIn(outer)
		nested = 0
		for _, p := range pids {
			if b, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", p)); err == nil && b != outer.String() {
				nested = p
			}
		}
		if outer != 0 && len(pids) >= 3 && nested != 0 {
			break
		}
	}
	if outer == 0 || len(pids) < 3 || nested == 0 {
		t.Fatalf("the outer namespace %v holds %v (nested: %d), want sh, sleep and the nested sleep", outer, pids, nested)
	}
	if own, _ := outerUserNS(os.Getpid()); own != 0 {
		t.Errorf("this test's own namespace is %v, want the host's (0)", own)
	}
	if got := staleKits(kitProcesses(), home); !slices.Equal(got, []userNS{outer}) {
		t.Errorf("the home's dead kits: %v, want [%v]", got, outer)
	}
	found, err := SweepStaleKits(home)
	if err != nil || len(found) != 1 || !strings.HasPrefix(found[0], outer.String()+" (") {
		t.Errorf("SweepStaleKits: %q, %v", found, err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("the namespace's first process is still running")
	}
	time.Sleep(100 * time.Millisecond)
	for _, p := range pids {
		if !zombie(p) {
			t.Errorf("pid %d is still running", p)
		}
	}
	if !strings.HasPrefix(outer.String(), "user:[") {
		t.Errorf("String: %s", outer)
	}
}

func pidsIn(ns userNS) []int {
	var out []int
	for _, p := range kitProcesses()[ns] {
		out = append(out, p.pid)
	}
	return out
}
