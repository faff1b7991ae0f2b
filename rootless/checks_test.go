package rootless

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const subIDFile = `# subordinate ids
alice:100000:65536

bob:165536:1000
1003:300000:65536
broken line
carol:x:65536
dave:400000:0
bob:500000:64536
  eve:600000:65536  
`

func TestParseSubIDs(t *testing.T) {
	got, err := parseSubIDs(strings.NewReader(subIDFile))
	if err != nil {
		t.Fatal(err)
	}
	want := []subIDRange{
		{"alice", 100000, 65536},
		{"bob", 165536, 1000},
		{"1003", 300000, 65536},
		{"bob", 500000, 64536},
		{"eve", 600000, 65536},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parseSubIDs:\n got %v\nwant %v", got, want)
	}
}

func TestSubIDsForNameOrUID(t *testing.T) {
	all, _ := parseSubIDs(strings.NewReader(subIDFile))
	if got := subIDsFor(all, "bob", 1002); len(got) != 2 {
		t.Errorf("bob: got %v, want both of his ranges", got)
	}
	if got := subIDsFor(all, "frank", 1003); len(got) != 1 || got[0].Start != 300000 {
		t.Errorf("uid 1003 under another name: got %v, want the 1003 line", got)
	}
	if got := subIDsFor(all, "", 1003); len(got) != 1 {
		t.Errorf("uid 1003 with no passwd name: got %v", got)
	}
	if got := subIDsFor(all, "", 4242); len(got) != 0 {
		t.Errorf("unknown uid: got %v, want none", got)
	}
}

func TestFreeSubIDStart(t *testing.T) {
	for _, c := range []struct {
		file string
		want uint64
	}{
		{"", 100000},
		{"alice:100000:65536\n", 165536}, // Debian's useradd gives the next user this one
		{"old:1000:10\n", 100000},
		{subIDFile, 665536},
	} {
		all, _ := parseSubIDs(strings.NewReader(c.file))
		if got := freeSubIDStart(all); got != c.want {
			t.Errorf("freeSubIDStart(%q) = %d, want %d", c.file, got, c.want)
		}
	}
}

// checksEnv is a prereqEnv for user bob (uid 1002) whose files live in a temp dir.
func checksEnv(t *testing.T, subuid string) *prereqEnv {
	dir := t.TempDir()
	e := &prereqEnv{uid: 1002, name: "bob", home: filepath.Join(dir, "home", ".moatc"),
		subuid: filepath.Join(dir, "subuid"), subgid: filepath.Join(dir, "subgid"), lookPath: exec.LookPath}
	if subuid != "" {
		if err := os.WriteFile(e.subuid, []byte(subuid), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func TestSubIDCheck(t *testing.T) {
	for _, c := range []struct {
		name, file string
		ok         bool
		detail     string
		fix        string
	}{
		{"no file", "", false, "no range for bob", "sudo usermod --add-subuids 100000-165535 bob"},
		{"other users only", "alice:100000:65536\n", false, "no range for bob", "sudo usermod --add-subuids 165536-231071 bob"},
		{"too small", "alice:100000:65536\nbob:165536:1000\n", false, "bob has 1000 ids", "sudo usermod --add-subuids 166536-232071 bob"},
		{"two ranges add up", "bob:100000:1000\n1002:200000:64536\n", true, "65536 ids (100000-100999, 200000-264535)", ""},
		{"commented out", "#bob:100000:65536\n", false, "no range for bob", "sudo usermod --add-subuids 100000-165535 bob"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := checksEnv(t, c.file)
			p := e.subIDCheck("subuid", e.subuid, "--add-subuids")
			if p.OK != c.ok || !strings.Contains(p.Detail, c.detail) || p.Fix != c.fix || !p.required {
				t.Errorf("got %+v\nwant ok=%v detail~%q fix=%q required", p, c.ok, c.detail, c.fix)
			}
		})
	}
}

func TestIDMapCheckNotSetuid(t *testing.T) {
	e := checksEnv(t, "")
	bin := filepath.Join(t.TempDir(), "newuidmap")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.lookPath = func(string) (string, error) { return bin, nil }
	p := e.idmapCheck("newuidmap")
	if p.OK || p.Fix != "sudo chown root: "+bin+" && sudo chmod u+s "+bin {
		t.Errorf("a plain 0755 newuidmap: got %+v, want a failure with the chmod u+s fix", p)
	}
	e.lookPath = func(string) (string, error) { return "", exec.ErrNotFound }
	if p := e.idmapCheck("newuidmap-missing"); p.OK || p.Fix != "sudo apt-get install -y uidmap" {
		t.Errorf("missing newuidmap: got %+v, want the apt-get fix", p)
	}
}

// checksFakeTools puts executables named after tools in a dir; "rootlesskit" prints version.
func checksFakeTools(t *testing.T, e *prereqEnv, version string, tools ...string) {
	dir := t.TempDir()
	for _, name := range tools {
		script := "#!/bin/sh\n"
		if name == "rootlesskit" {
			script += "echo 'rootlesskit version " + version + "'\n"
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.lookPath = func(name string) (string, error) {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err != nil {
			return "", exec.ErrNotFound
		}
		return p, nil
	}
}

func TestNetworkDriver(t *testing.T) {
	for _, c := range []struct {
		name, version string
		tools         []string
		ok            bool
		detail        string
	}{
		{"slirp4netns", "1.1.0", []string{"rootlesskit", "slirp4netns", "pasta"}, true, "slirp4netns"},
		{"pasta with rootlesskit 1", "1.1.0", []string{"rootlesskit", "pasta"}, false, "rootlesskit 1.1.0 cannot drive it"},
		{"pasta with rootlesskit 2", "2.3.1", []string{"rootlesskit", "pasta"}, true, "with rootlesskit 2.3.1 (--net=pasta)"},
		{"neither", "2.3.1", []string{"rootlesskit"}, false, "slirp4netns is not on PATH"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := checksEnv(t, "")
			checksFakeTools(t, e, c.version, c.tools...)
			rk := e.rootlesskitCheck()
			if !rk.OK || rk.version != "" {
				t.Fatalf("rootlesskit without versions: got %+v, want OK and no version asked", rk)
			}
			p := e.netCheck(rk)
			if p.OK != c.ok || !strings.Contains(p.Detail, c.detail) {
				t.Errorf("got %+v, want ok=%v detail~%q", p, c.ok, c.detail)
			}
			if !c.ok && p.Fix != "sudo apt-get install -y slirp4netns" {
				t.Errorf("fix %q, want the apt-get one", p.Fix)
			}
		})
	}
}

func TestRootlesskitVersion(t *testing.T) {
	e := checksEnv(t, "")
	e.versions = true
	checksFakeTools(t, e, "1.1.0", "rootlesskit")
	if rk := e.rootlesskitCheck(); !rk.OK || rk.version != "1.1.0" || !strings.Contains(rk.Detail, "no --net=pasta") {
		t.Errorf("rootlesskit 1.1.0: got %+v", rk)
	}
	checksFakeTools(t, e, "2.0.0", "rootlesskit")
	if rk := e.rootlesskitCheck(); !rk.OK || rk.major != 2 || !strings.Contains(rk.Detail, "has --net=pasta") {
		t.Errorf("rootlesskit 2.0.0: got %+v", rk)
	}
}

func TestHomeCheck(t *testing.T) {
	e := checksEnv(t, "")
	p := e.homeCheck()
	if !p.OK || !strings.Contains(p.Detail, "not made yet") {
		t.Errorf("a home whose parent is writable: got %+v", p)
	}
	if err := os.WriteFile(filepath.Dir(e.home), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if p := e.homeCheck(); p.OK || !strings.Contains(p.Detail, "not a directory") {
		t.Errorf("a home under a file: got %+v", p)
	}
}

func TestPrerequisiteErrorNamesEveryFix(t *testing.T) {
	err := error(&PrerequisiteError{User: "bob", Problems: []Problem{
		{Name: "subuid", Detail: "no range for bob", Fix: "sudo usermod --add-subuids 100000-165535 bob"},
		{Name: "/dev/net/tun", Detail: "permission denied", Fix: "sudo setfacl -m u:bob:rw /dev/net/tun"},
	}})
	var pe *PrerequisiteError
	if !errors.As(err, &pe) {
		t.Fatal("not a *PrerequisiteError")
	}
	msg := err.Error()
	for _, s := range []string{"2 problem(s)", "fix: sudo usermod --add-subuids 100000-165535 bob", "fix: sudo setfacl -m u:bob:rw /dev/net/tun", "make rootless-user USER=bob"} {
		if !strings.Contains(msg, s) {
			t.Errorf("message lacks %q:\n%s", s, msg)
		}
	}
}

// TestProbeUserNS makes a real user namespace: this machine, and CI, have them.
func TestProbeUserNS(t *testing.T) {
	if err := probeUserNS(); err != nil {
		max, _ := os.ReadFile("/proc/sys/user/max_user_namespaces")
		t.Fatalf("probeUserNS: %v (user.max_user_namespaces=%s)", err, strings.TrimSpace(string(max)))
	}
}

// BenchmarkPreflight: Preflight runs before every rootless start, so it must stay cheap.
func BenchmarkPreflight(b *testing.B) {
	home := b.TempDir()
	for b.Loop() {
		_ = PreflightHome(home)
	}
}

// BenchmarkCheck is the doctor's view, with rootlesskit --version.
func BenchmarkCheck(b *testing.B) {
	home := b.TempDir()
	for b.Loop() {
		CheckHome(home)
	}
}
