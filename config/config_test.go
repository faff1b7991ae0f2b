package config

import (
	"reflect"
	"strings"
	"testing"
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
		Env: map[string]string{"A": "1", "B": "two"}, Mounts: []string{"../data:/data:ro"}, Sandbox: "none",
		Memory: 512 << 20, CPUs: 1.5}
	tr := true
	want.Interactive = &tr
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
		{"grants: [github]\n", "f.yaml:1: grants: is not supported by this version of moatc yet"},
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
