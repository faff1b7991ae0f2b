package ctrd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testScope() SandboxScope {
	return SandboxScope{
		Root: "/run/moatc/runsc/0123456789abcdef", Namespace: "moatc",
		Address: "/home/u/.moatc/containerd/containerd.sock", Managed: true,
		TaskDir: "/home/u/.moatc/containerd/state/io.containerd.runtime.v2.task/moatc",
	}
}

func TestIsShim(t *testing.T) {
	sc := testScope()
	for _, c := range []struct {
		argv []string
		id   string
		ok   bool
	}{
		{[]string{"/opt/moatc/bin/containerd-shim-runsc-v1", "-namespace", "moatc", "-address", sc.Address, "-id", "moatc-0123456789ab"}, "moatc-0123456789ab", true},
		{[]string{"/opt/moatc/bin/containerd-shim-runc-v2", "-namespace", "moatc", "-id", "moatc-probe-runc-1", "-address", sc.Address, "-debug"}, "moatc-probe-runc-1", true},
		{[]string{"containerd-shim-runsc-v1", "-namespace=moatc", "-address=" + sc.Address, "-id=x"}, "x", true},
		// Another home's containerd, another namespace, containerd's short-lived commands.
		{[]string{"containerd-shim-runsc-v1", "-namespace", "moatc", "-address", "/tmp/other/containerd.sock", "-id", "moatc-0123456789ab"}, "", false},
		{[]string{"containerd-shim-runsc-v1", "-namespace", "buildkit", "-address", sc.Address, "-id", "moatc-0123456789ab"}, "", false},
		{[]string{"containerd-shim-runsc-v1", "-namespace", "moatc", "-address", sc.Address, "-id", "moatc-0123456789ab", "-bundle", "/b", "delete"}, "", false},
		{[]string{"/usr/bin/containerd", "-namespace", "moatc", "-address", sc.Address, "-id", "x"}, "", false},
	} {
		id, ok := sc.isShim(c.argv)
		if id != c.id || ok != c.ok {
			t.Errorf("isShim(%q) = %q %v, want %q %v", c.argv, id, ok, c.id, c.ok)
		}
	}
}

func TestIsRunsc(t *testing.T) {
	sc := testScope()
	mine := filepath.Join(sc.Root, "moatc")
	bundle := filepath.Join(sc.TaskDir, "moatc-0123456789ab")
	for _, c := range []struct {
		argv     []string
		id, root string
	}{
		{[]string{"runsc-sandbox", "--root=" + mine, "--log=" + bundle + "/log.json", "boot", "--bundle=" + bundle, "moatc-0123456789ab"}, "moatc-0123456789ab", mine},
		{[]string{"runsc-gofer", "--root=" + mine, "gofer", "--bundle=" + bundle, "moatc-0123456789ab"}, "moatc-0123456789ab", mine},
		{[]string{"/opt/moatc/bin/runsc", "--root", mine, "create", "--bundle", bundle, "moatc-0123456789ab"}, "moatc-0123456789ab", mine},
		// Before roots per home: the shared root, with a bundle of this home's containerd.
		{[]string{"runsc-sandbox", "--root=/run/containerd/runsc/moatc", "boot", "--bundle=" + bundle, "moatc-0123456789ab"}, "moatc-0123456789ab", "/run/containerd/runsc/moatc"},
		// The shared root with another home's bundle; another home's root; a delete under way.
		{[]string{"runsc-sandbox", "--root=/run/containerd/runsc/moatc", "boot", "--bundle=/tmp/other/containerd/state/io.containerd.runtime.v2.task/moatc/moatc-0123456789ab", "moatc-0123456789ab"}, "", ""},
		{[]string{"runsc-sandbox", "--root=/run/moatc/runsc/ffffffffffffffff/moatc", "boot", "--bundle=" + bundle, "moatc-0123456789ab"}, "", ""},
		{[]string{"/opt/moatc/bin/runsc", "--root", mine, "delete", "--force", "moatc-0123456789ab"}, "", ""},
		{[]string{"runsc-sandbox", "boot", "moatc-0123456789ab"}, "", ""},
	} {
		id, root, ok := sc.isRunsc(c.argv)
		if id != c.id || root != c.root || ok != (c.id != "") {
			t.Errorf("isRunsc(%q) = %q %q %v, want %q %q", c.argv, id, root, ok, c.id, c.root)
		}
	}
}

func TestReadStateDir(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"moatc-a_sandbox:moatc-a.state", "moatc-a_sandbox:moatc-a.lock", "runsc-moatc-a.sock", "runsc-moatc-b.sock", "other"} {
		os.WriteFile(filepath.Join(dir, f), []byte(`{"bundleDir":"/b/moatc-a","spec":{"linux":{"cgroupsPath":"/moatc/moatc-a"}}}`), 0o600)
	}
	got := map[string][]string{}
	var st *runscState
	if err := readStateDir(dir, func(id, file string, s *runscState) {
		got[id] = append(got[id], file)
		if s != nil {
			st = s
		}
	}); err != nil {
		t.Fatal(err)
	}
	if len(got["moatc-a"]) != 3 || len(got["moatc-b"]) != 1 || len(got) != 2 {
		t.Errorf("entries: %v", got)
	}
	if st == nil || st.BundleDir != "/b/moatc-a" || st.Spec.Linux.CgroupsPath != "/moatc/moatc-a" {
		t.Errorf("state: %+v", st)
	}
	if err := readStateDir(filepath.Join(dir, "missing"), func(string, string, *runscState) { t.Error("entry in a missing root") }); err != nil {
		t.Errorf("a missing root: %v", err)
	}
}

func TestStateRootPerHome(t *testing.T) {
	a, b := GVisor{Dir: "/home/a/.moatc/runsc"}, GVisor{Dir: "/home/b/.moatc/runsc"}
	if a.StateRoot() == b.StateRoot() || !strings.HasPrefix(a.StateRoot(), runscStateBase+"/") {
		t.Errorf("roots: %s %s", a.StateRoot(), b.StateRoot())
	}
	if a.StateRoot() != (GVisor{Dir: "/home/a/.moatc/runsc/"}).StateRoot() {
		t.Errorf("the same home has two roots")
	}
	// runsc's control socket, the longest path below the root, fits a unix socket.
	if p := filepath.Join(a.StateRoot(), "moatc", "runsc-moatc-0123456789ab.sock"); len(p) > 100 {
		t.Errorf("socket path %s is %d bytes", p, len(p))
	}
}

func TestCgroupsPath(t *testing.T) {
	for _, c := range []struct{ cg, want string }{
		{"", "/moatc/moatc-x"}, {"/moatc/moatc-x", "/moatc/moatc-x"}, {"system.slice:moatc:x", "/moatc/moatc-x"},
	} {
		if got := cgroupsPath(&HostSandbox{ID: "moatc-x", Cgroups: c.cg}, "moatc"); got != c.want {
			t.Errorf("cgroupsPath(%q) = %q, want %q", c.cg, got, c.want)
		}
	}
	// A hierarchy's root or a namespace's parent is never removed.
	for _, p := range []string{"/", "/moatc"} {
		if err := removeCgroups(p); err != nil {
			t.Errorf("removeCgroups(%q): %v", p, err)
		}
	}
}

func TestProcessAgeAndKillIf(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	age, ok := processAge(cmd.Process.Pid)
	if !ok || age > 5*time.Second {
		t.Errorf("age of a new process: %v %v", age, ok)
	}
	if old, ok := processAge(1); !ok || old < age {
		t.Errorf("age of pid 1: %v %v", old, ok)
	}
	if killIf(cmd.Process.Pid, func(argv []string) bool { return len(argv) > 1 && argv[1] == "31" }) {
		t.Errorf("killed a process the predicate refused")
	}
	// The sweep that uses killIf runs again on the next command; a kill that did not take
	// (seen once in CI, under load) may take a second try, never more.
	var seen []string
	killed := false
	for try := 0; try < 3 && !killed; try++ {
		killed = killIf(cmd.Process.Pid, func(argv []string) bool { seen = argv; return len(argv) > 1 && argv[1] == "30" })
		if !killed {
			t.Logf("try %d: not killed; its command line read %q", try+1, seen)
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !killed {
		t.Errorf("did not kill (its command line read %q)", seen)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("sleep: %v, want killed", err)
	}
}

func TestUnder(t *testing.T) {
	for _, c := range []struct {
		dir, path string
		want      bool
	}{{"/a/b", "/a/b/c", true}, {"/a/b", "/a/b", true}, {"/a/b", "/a/bc", false}, {"/a/b", "/a", false}, {"", "/a", false}, {"/a", "", false}} {
		if got := under(c.dir, c.path); got != c.want {
			t.Errorf("under(%q, %q) = %v", c.dir, c.path, got)
		}
	}
}
