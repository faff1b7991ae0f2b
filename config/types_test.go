package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every key refuses a value of the wrong YAML type, naming the file, the line and the key,
// what it found and a line to write instead.
func TestEveryKeyRefusesTheWrongType(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"command: 42\n", "f.yaml:1: command: must be a list of strings or a string (got a number), like: command: [npm, test]"},
		{"command: {a: b}\n", "f.yaml:1: command: must be a list of strings or a string (got a mapping)"},
		{"command: true\n", "f.yaml:1: command: must be a list of strings or a string (got true/false)"},
		{"command:\n", "f.yaml:1: command: must be a list of strings or a string (got nothing)"},
		{"command:\n  - make\n  - [a]\n", "f.yaml:3: command: list items must be strings (got a list), like: command: [npm, test]"},
		{"command: [make, ~]\n", "f.yaml:1: command: list items must be strings (got nothing)"},
		{"name: [a]\n", "f.yaml:1: name: must be a string (got a list), like: name: web"},
		{"name: 42\n", "f.yaml:1: name: must be a string (got a number)"},
		{"image: {a: b}\n", "f.yaml:1: image: must be an image reference, a string (got a mapping), like: image: debian:bookworm-slim"},
		{"image: 3.5\n", "f.yaml:1: image: must be an image reference, a string (got a number)"},
		{"base_image: [a]\n", "f.yaml:1: base_image: must be an image reference, a string (got a list), like: base_image: debian:bookworm-slim"},
		{"env: [A=b]\n", "f.yaml:1: env: must be a mapping of NAME: value (got a list), like: env: {NODE_ENV: test}"},
		{"env: A=b\n", "f.yaml:1: env: must be a mapping of NAME: value (got a string)"},
		{"env:\n  A: [1]\n", "f.yaml:2: env.A: must be a string, a number or true/false (got a list), like: env: {DEBUG: \"1\"}"},
		{"env:\n  A:\n", "f.yaml:2: env.A: must be a string, a number or true/false (got nothing)"},
		{"env:\n  A: x\n  A: y\n", "f.yaml:3: env.A: appears twice"},
		{"env: {[a]: b}\n", "f.yaml:1: env: a key must be a plain name (got a list)"},
		{"env: {1: b}\n", "f.yaml:1: env: a variable's name must be a string (got a number)"},
		{"mounts: /a:/b\n", "f.yaml:1: mounts: must be a list of HOST:CONTAINER[:ro|rw] (got a string), like: mounts: [../data:/data:ro]"},
		{"mounts:\n  - {a: b}\n", "f.yaml:2: mounts: list items must be strings (got a mapping)"},
		{"interactive: yes\n", "f.yaml:1: interactive: must be true or false (got a string), like: interactive: true"},
		{"interactive: \"true\"\n", "f.yaml:1: interactive: must be true or false (got a string)"},
		{"interactive: 1\n", "f.yaml:1: interactive: must be true or false (got a number)"},
		{"sandbox: [none]\n", "f.yaml:1: sandbox: must be gvisor or none (got a list), like: sandbox: gvisor"},
		{"sandbox: false\n", "f.yaml:1: sandbox: must be gvisor or none (got true/false)"},
		{"container: 2g\n", "f.yaml:1: container: must be a mapping with memory, cpus and pids (got a string), like: container: {memory: 2g, cpus: 2, pids: 512}"},
		{"container:\n  memory: [2g]\n", "f.yaml:2: container.memory: must be a size (got a list), like: container: {memory: 512m}"},
		{"container:\n  memory: true\n", "f.yaml:2: container.memory: must be a size (got true/false)"},
		{"container:\n  cpus: \"1.5\"\n", "f.yaml:2: container.cpus: must be a number, without quotes (got a string), like: container: {cpus: 1.5}"},
		{"container:\n  cpus: {a: 1}\n", "f.yaml:2: container.cpus: must be a number, without quotes (got a mapping)"},
		{"container:\n  pids: 1.5\n", "f.yaml:2: container.pids: must be a whole number, without quotes (got a number)"},
		{"container:\n  pids: \"512\"\n", "f.yaml:2: container.pids: must be a whole number, without quotes (got a string), like: container: {pids: 512}"},
		{"container:\n  pids: 1\n  pids: 2\n", "f.yaml:3: container.pids: appears twice"},
		{"ports: 8080\n", "f.yaml:1: ports: must be a list of [IP:]HOST:CONTAINER[/tcp|udp] (got a number), like: ports: [8080:80]"},
		{"ports: [[8080, 80]]\n", "f.yaml:1: ports: list items must be strings (got a list)"},
		{"network: 1\n", "f.yaml:1: network: must be default or none, or a mapping with mode, host, policy and allow (got a number), like: network: none"},
		{"network: [none]\n", "f.yaml:1: network: must be default or none, or a mapping with mode, host, policy and allow (got a list)"},
		{"network:\n  mode: [none]\n", "f.yaml:2: network.mode: must be default or none (got a list), like: network: {mode: none}"},
		{"network:\n  host: 5432\n", "f.yaml:2: network.host: must be a list of PORT[/tcp|udp] (got a number), like: network: {host: [5432, 53/udp]}"},
		{"network:\n  policy: [strict]\n", "f.yaml:2: network.policy: must be permissive or strict (got a list), like: network: {policy: strict}"},
		{"network:\n  policy: true\n", "f.yaml:2: network.policy: must be permissive or strict (got true/false)"},
		{"network:\n  allow: api.example.com\n", "f.yaml:2: network.allow: must be a list of hosts (got a string), like: network: {allow: [api.example.com, \"*.example.org\"]}"},
		{"network:\n  mode: none\n  mode: default\n", "f.yaml:3: network.mode: appears twice"},
		{"grants: github\n", "f.yaml:1: grants: must be a list of grant names (got a string), like: grants: [github]"},
		{"grants: [{github: x}]\n", "f.yaml:1: grants: list items must be strings (got a mapping)"},
		{"dependencies: {node: 20}\n", "f.yaml:1: dependencies: must be a list (got a mapping), like: dependencies: [node@20, git]"},
		{"agent: 42\n", "f.yaml:1: agent: must be an agent's name, or a mapping with name, version and args (got a number), like: agent: claude"},
		{"agent: [claude]\n", "f.yaml:1: agent: must be an agent's name, or a mapping with name, version and args (got a list)"},
		{"agent:\n  name: [claude]\n", "f.yaml:2: agent.name: must be an agent's name, a string (got a list), like: agent: {name: claude}"},
		{"agent:\n  name: claude\n  version: [1]\n", "f.yaml:3: agent.version: must be a version (got a list), like: agent: {name: claude, version: 2.1.3}"},
		{"agent:\n  name: claude\n  args: --model\n", "f.yaml:3: agent.args: must be a list of strings (got a string), like: agent: {name: claude, args: [--model, opus]}"},
		{"agent:\n  name: claude\n  name: codex\n", "f.yaml:3: agent.name: appears twice"},
		// The key a value is printed with cannot carry control characters from the file.
		{"env:\n  \"A\\e[2J\": [1]\n", `f.yaml:2: env.A\x1b[2J: must be`},
	} {
		_, err := Parse("f.yaml", []byte(c.in))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%q:\n got  %v\n want %s...", c.in, err, c.want)
		}
	}
}

// Values of the right type, written the ways people write them, still parse.
func TestRightTypesParse(t *testing.T) {
	f, err := Parse("f.yaml", []byte(`
name: web
command: [sleep, 10, true]
env: {A: 1, B: true, C: "x", D: 1.5}
interactive: false
container: {memory: 8388608, cpus: 2, pids: 100}
network: {mode: default, host: [5432, 53/udp]}
agent: {name: claude, version: 2.1}
`))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(f.Command, " ") != "sleep 10 true" || f.Env["A"] != "1" || f.Env["B"] != "true" || f.Env["D"] != "1.5" ||
		f.Interactive == nil || *f.Interactive || f.Memory != 8<<20 || f.CPUs != 2 || f.Pids != 100 || f.Agent.Version != "2.1" {
		t.Errorf("%+v", f)
	}
}

func TestSettingsRefuseTheWrongType(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"address: [a]\n", "config.yaml:1: address: must be a containerd socket, a string (got a list), like: address: /run/containerd/containerd.sock"},
		{"namespace: 42\n", "config.yaml:1: namespace: must be a containerd namespace, a string (got a number), like: namespace: moatc"},
		{"\npool: {a: b}\n", "config.yaml:2: pool.a: unknown key (known: gvisor, runc)"},
		{"pool: [a]\n", "config.yaml:1: pool: must be the warm pool, a mapping of runtime to size (got a list), like: pool: {gvisor: 2, runc: 2}"},
		{"pool:\n  runc: {size: 1, memory: 1g}\n", "config.yaml:2: pool.runc: runc members are networks only"},
		{"pool:\n  gvisor: -1\n", "config.yaml:2: pool.gvisor: \"-1\" is not a pool size: write a number from 0 (no warm starts) to 64"},
		{"pool:\n  gvisor: {size: 1, memory: lots}\n", "config.yaml:2: pool.gvisor.memory: \"lots\" is not a size"},
		{"pool:\n  gvisor: {size: 1, cpus: 0}\n", "config.yaml:2: pool.gvisor.cpus: \"0\" is not a number of CPUs"},
		{"pool:\n  gvisor: {memory: 1g}\n", "config.yaml:2: pool.gvisor: needs a size"},
		{"cni_plugin_dir: true\n", "config.yaml:1: cni_plugin_dir: must be a directory, a string (got true/false)"},
		{"cni_conf_dir:\n", "config.yaml:1: cni_conf_dir: must be a directory, a string (got nothing)"},
		{"upstream_ca: [a.pem]\n", "config.yaml:1: upstream_ca: must be a PEM file, a string (got a list)"},
		{"adress: /x.sock\n", "config.yaml:1: adress: unknown key (known: address, namespace, network_pool, pool, cni_plugin_dir, cni_conf_dir, upstream_ca)"},
		{"namespace: a\nnamespace: b\n", "config.yaml:2: namespace: appears twice"},
		{"address: tcp://127.0.0.1:1234\n", "config.yaml:1: address: \"tcp://127.0.0.1:1234\" is not a containerd socket"},
		{"address: run/x.sock\n", "config.yaml:1: address: \"run/x.sock\" is not a containerd socket: give the socket's absolute path"},
		{"- a\n", "config.yaml:1: the file must be a mapping"},
		{"address: [\n", "config.yaml:"},
	} {
		p := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(p, []byte(c.in), 0o600)
		_, err := LoadSettings(p)
		if err == nil || !strings.HasPrefix(err.Error(), filepath.Dir(p)+"/"+c.want) {
			t.Errorf("%q:\n got  %v\n want %s...", c.in, err, c.want)
		}
	}
	p := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(p, []byte("address: unix:///run/x.sock\nnamespace: ns\npool: 10.1.0.0/16\n"), 0o600)
	if s, err := LoadSettings(p); err != nil || s.Address != "/run/x.sock" || s.Namespace != "ns" || s.NetworkPool != "10.1.0.0/16" {
		t.Errorf("%+v %v", s, err)
	}
	os.WriteFile(p, []byte("network_pool: 10.2.0.0/16\npool:\n  gvisor: {size: 3, memory: 1g, cpus: 1.5, pids: 100}\n  runc: 0\n"), 0o600)
	s, err := LoadSettings(p)
	if err != nil || s.NetworkPool != "10.2.0.0/16" || s.WarmPool["gvisor"] != (PoolClass{Size: 3, Memory: 1 << 30, CPUs: 1.5, Pids: 100}) ||
		s.WarmPool["runc"] != (PoolClass{}) {
		t.Errorf("warm pool: %+v %v", s, err)
	}
	if s, err := LoadSettings(filepath.Join(t.TempDir(), "none.yaml")); err != nil || s.WarmPool != nil || s.Address != "" || s.NetworkPool != "" {
		t.Errorf("missing file: %+v %v", s, err)
	}
}

func TestSocketPath(t *testing.T) {
	for in, want := range map[string]string{
		"/run/x.sock": "/run/x.sock", "unix:///run/x.sock": "/run/x.sock", "/run//a/../x.sock": "/run/x.sock",
	} {
		if got, err := SocketPath(in); err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"tcp://127.0.0.1:2375", "x.sock", "./x.sock", "unix://x.sock", "unix:/run/x.sock", "npipe:////./pipe/x", "", "unix://"} {
		if got, err := SocketPath(in); err == nil || !strings.Contains(err.Error(), "is not a containerd socket") {
			t.Errorf("%q: accepted as %q (%v)", in, got, err)
		}
	}
}

func TestDockerImages(t *testing.T) {
	f, err := Parse("f.yaml", []byte("docker_images: [busybox, postgres:16]\ndependencies: [docker:dind]\n"))
	if err != nil || len(f.DockerImages) != 2 || f.DockerImages[1].Text != "postgres:16" || f.DockerImages[1].Line != 1 {
		t.Fatalf("got %+v, %v", f, err)
	}
	for in, want := range map[string]string{
		"docker_images: busybox\n":                "f.yaml:1: docker_images: must be a list of image references",
		"docker_images:\n  - ok\n  - 'Bad Ref'\n": `f.yaml:3: docker_images: "Bad Ref" is not an image reference`,
		// Without docker:dind the images would be dropped: refused at the key's line.
		"name: a\ndocker_images: [busybox]\n":                        "f.yaml:2: docker_images: needs docker:dind in dependencies",
		"dependencies: [docker:host]\ndocker_images:\n  - busybox\n": "f.yaml:3: docker_images: needs docker:dind in dependencies (only a docker:dind engine starts with these images): add `dependencies: [docker:dind]`",
	} {
		if _, err := Parse("f.yaml", []byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}
