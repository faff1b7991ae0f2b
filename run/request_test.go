package run

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moatc/moatc/state"
)

func hostEnv(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// resolveIn resolves o in a fresh workspace holding moatc.yaml (if yaml is not empty).
func resolveIn(t *testing.T, yaml string, o Options) (Request, error) {
	t.Helper()
	ws := t.TempDir()
	if yaml != "" {
		if err := os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o.Home, o.Args = t.TempDir(), []string{ws}
	if o.LookupEnv == nil {
		o.LookupEnv = hostEnv(nil)
	}
	o.Warn = &bytes.Buffer{}
	req, _, err := Resolve(o)
	return req, err
}

func isUsage(err error) bool {
	var ue *UsageError
	return errors.As(err, &ue)
}

func TestParseEnvFile(t *testing.T) {
	data := "\ufeff# a comment\n\nA=1\n  B=two words = kept \r\nHOSTSET\nHOSTUNSET\nA=override\nC=\"quoted\"\n   # indented comment\n"
	got := map[string]string{}
	err := ParseEnvFile("f.env", data, hostEnv(map[string]string{"HOSTSET": "h"}), func(k, v string) { got[k] = v })
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"A": "override", "B": "two words = kept ", "HOSTSET": "h", "C": `"quoted"`}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	for _, bad := range []struct{ data, where string }{
		{"A=1\n=x\n", "f.env:2"},
		{"A=1\n\nBAD KEY=1\n", "f.env:3"},
		{"A=a\x00b\n", "f.env:1"},
	} {
		err := ParseEnvFile("f.env", bad.data, hostEnv(nil), func(k, v string) {})
		if err == nil || !strings.Contains(err.Error(), bad.where+":") {
			t.Errorf("%q: got %v, want an error naming %s", bad.data, err, bad.where)
		}
	}
}

func TestResolveEnv(t *testing.T) {
	dir := t.TempDir()
	ef := filepath.Join(dir, "a.env")
	os.WriteFile(ef, []byte("FROMFILE=f\nSHARED=file\n"), 0o644)
	req, err := resolveIn(t, "env:\n  SHARED: yaml\n  YAMLONLY: y\n", Options{
		EnvFiles:  []string{ef},
		Env:       []string{"SET", "UNSET", "LIT=bar", "SHARED=flag", "EMPTY="},
		LookupEnv: hostEnv(map[string]string{"SET": "hostval"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	env := req.Spec.Env
	for _, want := range []string{"SET=hostval", "LIT=bar", "SHARED=flag", "FROMFILE=f", "YAMLONLY=y", "EMPTY="} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %s", env, want)
		}
	}
	for _, kv := range env {
		if strings.HasPrefix(kv, "UNSET") {
			t.Errorf("-e UNSET with no host value put %q in the env (Docker leaves it unset)", kv)
		}
		if strings.HasPrefix(kv, "SHARED=") && kv != "SHARED=flag" {
			t.Errorf("SHARED appears twice: %q", env)
		}
	}
	if _, err := resolveIn(t, "", Options{EnvFiles: []string{filepath.Join(dir, "missing.env")}}); !isUsage(err) || !strings.Contains(err.Error(), "missing.env") {
		t.Errorf("missing env file: %v", err)
	}
	if _, err := resolveIn(t, "", Options{Env: []string{"=x"}}); !isUsage(err) {
		t.Errorf("-e =x: %v", err)
	}
}

func TestResolveImagePrecedence(t *testing.T) {
	yaml := "image: busybox\nbase_image: debian:bookworm-slim\ndependencies: [jq]\n"
	req, err := resolveIn(t, yaml, Options{Image: "alpine:3"})
	if err != nil {
		t.Fatal(err)
	}
	if req.Spec.Image != "alpine:3" || req.Deps == nil || req.Deps.Base != "alpine:3" {
		t.Errorf("flag image lost to the file: image %q, deps base %+v", req.Spec.Image, req.Deps)
	}
	req, err = resolveIn(t, yaml, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if req.Deps.Base != "debian:bookworm-slim" || req.Spec.Image != "busybox" {
		t.Errorf("without the flag: image %q, base %q", req.Spec.Image, req.Deps.Base)
	}
	req, err = resolveIn(t, "network: none\ncontainer:\n  memory: 1g\n", Options{Network: "default", Memory: "64m"})
	if err != nil {
		t.Fatal(err)
	}
	if req.Spec.Network != state.NetworkDefault || req.Spec.Memory != 64<<20 {
		t.Errorf("flags lost to the file: network %q memory %d", req.Spec.Network, req.Spec.Memory)
	}
}

func TestResolveNumbers(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	i := func(v int64) *int64 { return &v }
	for name, o := range map[string]Options{
		"cpus NaN": {CPUs: f(math.NaN())}, "cpus +Inf": {CPUs: f(math.Inf(1))}, "cpus -1": {CPUs: f(-1)}, "cpus 0": {CPUs: f(0)},
		"memory 0": {Memory: "0"}, "memory -1g": {Memory: "-1g"}, "pids -2": {Pids: i(-2)}, "pids 0": {Pids: i(0)},
		"log-max -1m": {LogMax: "-1m"}, "stop-timeout -1": {StopTimeout: i(-1)},
	} {
		if _, err := resolveIn(t, "", o); !isUsage(err) {
			t.Errorf("%s: got %v, want a usage error", name, err)
		}
	}
	req, err := resolveIn(t, "", Options{CPUs: f(1.5), Pids: i(-1), StopTimeout: i(0)})
	if err != nil || req.Spec.CPUs != 1.5 || req.Spec.Pids != 0 || req.Spec.StopTimeout == nil || *req.Spec.StopTimeout != 0 {
		t.Errorf("good numbers: %v %+v", err, req.Spec)
	}
}

func TestParseTmpfs(t *testing.T) {
	tm, err := ParseTmpfs("/run/x/:size=64m,mode=1777")
	if err != nil || tm.Path != "/run/x" || !slices.Equal(tm.Options, []string{"nosuid", "nodev", "size=64m", "mode=1777", "noexec"}) {
		t.Errorf("got %+v %v", tm, err)
	}
	tm, err = ParseTmpfs("/cache:exec")
	if err != nil || slices.Contains(tm.Options, "noexec") {
		t.Errorf("exec: got %+v %v", tm, err)
	}
	for _, bad := range []string{"", "rel", "/", "/x:suid", "/x:dev", "/x:size=1m,bind", "/x:mode=abc", "/x:size=1m;rm"} {
		if _, err := ParseTmpfs(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseLabels(t *testing.T) {
	l, err := ParseLabels([]string{"a=1", "b", "c=x=y"})
	if err != nil || l["a"] != "1" || l["b"] != "" || l["c"] != "x=y" {
		t.Errorf("got %v %v", l, err)
	}
	for _, bad := range []string{"moatc.run-id=x", "MOATC.role=w", "=v", "a b=1"} {
		if _, err := ParseLabels([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestResolveDockerFlags(t *testing.T) {
	req, err := resolveIn(t, "", Options{Workdir: "/workspace/src/", Hostname: "web-1.local", Remove: true, Init: true,
		ReadOnly: true, WorkspaceRO: true, Tmpfs: []string{"/tmp"}, Labels: []string{"team=x"}})
	if err != nil {
		t.Fatal(err)
	}
	s := req.Spec
	if s.Workdir != "/workspace/src" || s.Hostname != "web-1.local" || !s.Remove || !s.Init || !s.ReadOnly || !s.WorkspaceRO ||
		len(s.Tmpfs) != 1 || s.Labels["team"] != "x" {
		t.Errorf("got %+v", s)
	}
	for name, o := range map[string]Options{
		"relative workdir": {Workdir: "src"}, "bad hostname": {Hostname: "a_b"}, "long hostname": {Hostname: strings.Repeat("a", 64)},
		"moatc label": {Labels: []string{"moatc.role=x"}}, "two paths": {Args: []string{"a", "b"}},
	} {
		if name == "two paths" {
			if _, _, err := Resolve(Options{Args: o.Args, Home: t.TempDir()}); !isUsage(err) {
				t.Errorf("%s: got %v", name, err)
			}
			continue
		}
		if _, err := resolveIn(t, "", o); !isUsage(err) {
			t.Errorf("%s: got %v, want a usage error", name, err)
		}
	}
}

func TestWarnWorkspace(t *testing.T) {
	cases := map[string]bool{"/": true, t.TempDir(): false}
	if home, err := os.UserHomeDir(); err == nil {
		cases[home] = true
	}
	for ws, warn := range cases {
		var b bytes.Buffer
		warnWorkspace(&b, ws)
		if got := strings.Count(b.String(), "\n"); (got == 1) != warn || got > 1 {
			t.Errorf("workspace %s: warning %q", ws, b.String())
		}
	}
}

func TestSplitArgs(t *testing.T) {
	for _, c := range []struct {
		args, argv, pos, cmd []string
	}{
		{[]string{"ls", "-l"}, []string{"moatc", "run", "--", "ls", "-l"}, []string{}, []string{"ls", "-l"}},
		{[]string{"ws", "--", "ls"}, []string{"moatc", "run", "ws", "--", "ls"}, []string{"ws"}, []string{"ls"}},
		{[]string{"ws"}, []string{"moatc", "run", "ws"}, []string{"ws"}, nil},
	} {
		pos, cmd := SplitArgs(c.args, c.argv)
		if !slices.Equal(pos, c.pos) || !slices.Equal(cmd, c.cmd) {
			t.Errorf("%q: got %q %q", c.argv, pos, cmd)
		}
	}
}

// -i and -t given either way beat moatc.yaml; not given, the file decides.
func TestResolveBoolFlagsBeatTheFile(t *testing.T) {
	yes, no := true, false
	yaml := "interactive: true\n" // sandbox: is a policy key (it needs moatc trust): not here
	req, err := resolveIn(t, yaml, Options{Terminal: true, NoSandbox: &yes})
	if err != nil {
		t.Fatal(err)
	}
	if req.Spec.Runtime != state.Runc || !req.Spec.Interactive || !req.Spec.TTY {
		t.Errorf("the file's settings: runtime %q interactive %v tty %v", req.Spec.Runtime, req.Spec.Interactive, req.Spec.TTY)
	}
	req, err = resolveIn(t, yaml, Options{Terminal: true, NoSandbox: &no, Interactive: &no})
	if err != nil {
		t.Fatal(err)
	}
	if req.Spec.Runtime != state.GVisor || req.Spec.Interactive || req.Spec.TTY {
		t.Errorf("--no-sandbox=false -i=false lost to the file: runtime %q interactive %v tty %v", req.Spec.Runtime, req.Spec.Interactive, req.Spec.TTY)
	}
	req, err = resolveIn(t, "", Options{Terminal: true, Interactive: &yes, TTY: &no})
	if err != nil || req.Spec.TTY || !req.Spec.Interactive {
		t.Errorf("-i -t=false: tty %v interactive %v err %v", req.Spec.TTY, req.Spec.Interactive, err)
	}
	req, err = resolveIn(t, "", Options{Terminal: true, TTY: &yes})
	if err != nil || !req.Spec.TTY || req.Spec.Interactive {
		t.Errorf("-t alone: tty %v interactive %v err %v", req.Spec.TTY, req.Spec.Interactive, err)
	}
	var nt *NoTTYError
	if _, err := resolveIn(t, "", Options{Terminal: false, TTY: &yes}); !errors.As(err, &nt) {
		t.Errorf("-t without a terminal: %v", err)
	}
	if _, err := resolveIn(t, "", Options{Terminal: true, TTY: &yes, Detach: true}); !isUsage(err) {
		t.Errorf("-t -d: %v", err)
	}
}
