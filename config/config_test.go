package config

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	f, err := Parse("moatc.yaml", []byte(`
name: agent
image: busybox
command: [sh, -c, "echo hi"]
env:
  A: "1"
  B: two
mounts: ["../data:/data:ro"]
interactive: true
sandbox: none
container:
  memory: 512m
  cpus: 1.5
`))
	if err != nil {
		t.Fatal(err)
	}
	want := &File{Path: "moatc.yaml", Name: "agent", Image: "busybox", Command: []string{"sh", "-c", "echo hi"},
		Env: map[string]string{"A": "1", "B": "two"}, Mounts: []Item{{"../data:/data:ro", 8}}, Sandbox: "none",
		Memory: 512 << 20, CPUs: 1.5}
	tr := true
	want.Interactive = &tr
	want.Sum = f.Sum
	want.Policy = []Setting{{Key: "mounts", Line: 8, Value: "[../data:/data:ro]"}, {Key: "sandbox", Line: 10, Value: "none"}}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("got %+v\nwant %+v", f, want)
	}
	d, err := Parse("moatc.yaml", []byte("dependencies:\n  - node@20\n  - npm:typescript\nports: [8080:80]\n"))
	if err != nil || !reflect.DeepEqual(d.Dependencies, []Item{{"node@20", 2}, {"npm:typescript", 3}}) || d.Ports[0].Text != "8080:80" {
		t.Errorf("dependencies %+v ports %+v %v", d.Dependencies, d.Ports, err)
	}
	s, err := Parse("moatc.yaml", []byte("command: make test\n"))
	if err != nil || !reflect.DeepEqual(s.Command, []string{"/bin/sh", "-c", "make test"}) {
		t.Errorf("string command: %v %v", s.Command, err)
	}
}

func TestParseErrorsNameLineAndKey(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"imgae: x\n", "f.yaml:1: imgae: unknown key"},
		{"name: a\nenv: [a]\n", "f.yaml:2: env: must be a mapping"},
		{"name: a\n\nsandbox: docker\n", "f.yaml:3: sandbox: \"docker\" is not a sandbox"},
		{"container:\n  cpus: -1\n", "f.yaml:2: container.cpus"},
		{"container:\n  disk: 1g\n", "f.yaml:2: container.disk: unknown key"},
		{"name: a\nname: b\n", "f.yaml:2: name: appears twice"},
		{"secrets: {A: b}\n", "f.yaml:1: secrets: is not supported by this version of moatc yet"},
		{"grants: [GitHub]\n", "f.yaml:1: grants: \"GitHub\" is not a grant name"},
		{"network:\n  policy: open\n", "f.yaml:2: network.policy: \"open\" is not a network policy"},
		{"network:\n  allow:\n    - ok.example.com\n    - https://x.example.com/\n", "f.yaml:4: network.allow: allow entry \"https://x.example.com/\": give a host, not a URL"},
		{"dependencies: node\n", "f.yaml:1: dependencies: must be a list"},
		{"network: bridge\n", "f.yaml:1: network: \"bridge\" is not a network mode"},
		{"- a\n", "f.yaml:1: the file must be a mapping"},
		{"name: [\n", "f.yaml:"},
		{"mounts:\n  - [a]\n", "f.yaml:2"},
	} {
		_, err := Parse("f.yaml", []byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want %q", c.in, err, c.want)
		}
	}
}

func TestParseMemory(t *testing.T) {
	for in, want := range map[string]int64{"512m": 512 << 20, "2g": 2 << 30, "2GB": 2 << 30, "1.5g": 3 << 29, "8388608": 8 << 20} {
		if got, err := ParseMemory(in); err != nil || got != want {
			t.Errorf("%s: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "lots", "1x", "-5m", "1k"} {
		if _, err := ParseMemory(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestPolicyKeys(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string // "key@line"
	}{
		{"name: a\nimage: busybox\ncommand: [sh]\nenv: {A: b}\ndependencies: [git]\ninteractive: true\n", nil},
		{"sandbox: gvisor\nnetwork: none\ncontainer: {memory: 1g, cpus: 1, pids: 100}\n", nil},
		{"network: {mode: none}\n", nil},
		{"sandbox: none\n", []string{"sandbox@1"}},
		{"name: x\nmounts: [/etc:/hostetc]\n", []string{"mounts@2"}},
		{"ports: [8080:80]\n", []string{"ports@1"}},
		{"network:\n  mode: default\n  host: [5432, 53/udp]\n", []string{"network.host@3"}},
		{"container:\n  pids: 100000\n", []string{"container.pids@2"}},
		{"dependencies:\n  - git\n  - docker:host\n", []string{"dependencies@3"}},
		{"dependencies: [docker:dind]\n", nil},
		{"dependencies: [docker:dind]\ndocker_images:\n  - busybox\n", []string{"docker_images@3"}},
		{"grants:\n  - github\n", []string{"grants@2"}},
		// A strict policy and its allow list only narrow the default (permissive).
		{"network:\n  policy: strict\n  allow: [api.example.com, \"*.example.org:443\"]\n", nil},
	} {
		f, err := Parse("f.yaml", []byte(c.in))
		if err != nil {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		var got []string
		for _, s := range f.Policy {
			got = append(got, fmt.Sprintf("%s@%d", s.Key, s.Line))
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: policy %v, want %v", c.in, got, c.want)
		}
	}
}

// A value from the workspace is printed escaped: it cannot rewrite the person's terminal.
func TestPolicyValuesArePrintable(t *testing.T) {
	f, err := Parse("f.yaml", []byte("mounts: [\"/etc:/e\\e[2K\\rharmless\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	v := f.Policy[0].Value
	if strings.ContainsAny(v, "\x1b\r") || !strings.Contains(v, `\x1b[2K\rharmless`) {
		t.Errorf("value %q keeps control characters", v)
	}
}

func TestSumIsOfTheBytes(t *testing.T) {
	a, _ := Parse("f.yaml", []byte("sandbox: none\n"))
	b, _ := Parse("f.yaml", []byte("sandbox: none\n\n"))
	if a.Sum == b.Sum || len(a.Sum) != 64 {
		t.Errorf("sums %s %s", a.Sum, b.Sum)
	}
}

func TestNetworkKey(t *testing.T) {
	f, err := Parse("f.yaml", []byte("network:\n  host: [8080, 53/udp]\n"))
	if err != nil || len(f.HostPorts) != 2 || f.HostPorts[1].Text != "53/udp" || f.HostPorts[1].Line != 2 {
		t.Fatalf("%+v %v", f, err)
	}
	for in, want := range map[string]string{
		"network: {host: 80}\n":          "f.yaml:1: network.host: must be a list",
		"network: {hosts: [80]}\n":       "f.yaml:1: network.hosts: unknown key",
		"network: {mode: bridge}\n":      "f.yaml:1: network.mode: \"bridge\" is not a network mode",
		"network: [a]\n":                 "f.yaml:1: network: must be default or none, or a mapping",
		"network:\n  host:\n    - [1]\n": "f.yaml:3: network.host: list items must be strings",
	} {
		if _, err := Parse("f.yaml", []byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", in, err, want)
		}
	}
}

func TestLoadRefusesWhatIsNotARegularFile(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(secret, []byte("root:SECRET-HASH:19000:0:99999:7:::\n"), 0o600)
	for name, create := range map[string]func(ws string) error{
		"symlink":   func(ws string) error { return os.Symlink(secret, filepath.Join(ws, "moatc.yaml")) },
		"directory": func(ws string) error { return os.Mkdir(filepath.Join(ws, "moatc.yaml"), 0o700) },
		"fifo":      func(ws string) error { return unix.Mkfifo(filepath.Join(ws, "moatc.yaml"), 0o600) },
		"too big": func(ws string) error {
			return os.WriteFile(filepath.Join(ws, "moatc.yaml"), bytes.Repeat([]byte("# x\n"), MaxSize/4+1), 0o600)
		},
		// agent.yaml is not read in place of a refused moatc.yaml.
		"symlink before agent.yaml": func(ws string) error {
			os.WriteFile(filepath.Join(ws, "agent.yaml"), []byte("name: a\n"), 0o600)
			return os.Symlink(secret, filepath.Join(ws, "moatc.yaml"))
		},
	} {
		t.Run(name, func(t *testing.T) {
			ws := t.TempDir()
			if err := create(ws); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { _, err := Load(ws); done <- err }()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("loaded")
				}
				if strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), filepath.Join(ws, "moatc.yaml")) {
					t.Errorf("error %q", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("Load hangs")
			}
		})
	}
	ws := t.TempDir()
	os.WriteFile(filepath.Join(ws, "agent.yaml"), []byte("name: a\n"), 0o600)
	if f, err := Load(ws); err != nil || f.Name != "a" {
		t.Errorf("agent.yaml: %+v %v", f, err)
	}
}

func TestAgentKey(t *testing.T) {
	f, err := Parse("moatc.yaml", []byte("agent: claude\n"))
	if err != nil || f.Agent == nil || f.Agent.Name != "claude" || f.Agent.Line != 1 {
		t.Fatalf("agent: claude: %+v %v", f, err)
	}
	if len(f.Policy) != 1 || f.Policy[0].Key != "agent" {
		t.Errorf("an agent brings its grant: it is a policy key, got %+v", f.Policy)
	}
	f, err = Parse("moatc.yaml", []byte("image: x\nagent:\n  name: codex\n  version: 0.50.0\n  args: [--model, o4]\n"))
	if err != nil || f.Agent.Name != "codex" || f.Agent.Version != "0.50.0" || len(f.Agent.Args) != 2 {
		t.Fatalf("agent mapping: %+v %v", f.Agent, err)
	}
	for doc, want := range map[string]string{
		"agent: [claude]\n":                    "moatc.yaml:1: agent: must be an agent's name",
		"agent:\n  version: 1\n":               "moatc.yaml:2: agent: the mapping needs name",
		"agent:\n  name: claude\n  tools: 1\n": "moatc.yaml:3: agent.tools: unknown key (known: name, version, args)",
		"agent:\n  name: claude\n  args: 3\n":  "moatc.yaml:3: agent.args: must be a list of strings",
	} {
		_, err := Parse("moatc.yaml", []byte(doc))
		if err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("%q: %v, want %q...", doc, err, want)
		}
	}
}
