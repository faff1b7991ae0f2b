package engine

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func TestDecodeCreate(t *testing.T) {
	req, err := decodeCreate([]byte(`{"Image":"busybox","Cmd":["echo","hi"],"NotAField":{"x":1},"HostConfig":{"AutoRemove":true,"Future":[1]}}`))
	if err != nil {
		t.Fatalf("unknown fields must be ignored, as Docker does: %v", err)
	}
	if req.Image != "busybox" || len(req.Cmd) != 2 || !req.HostConfig.AutoRemove {
		t.Errorf("decoded %+v", req)
	}
	req, err = decodeCreate([]byte(`{"Image":"busybox"}`))
	if err != nil || req.HostConfig == nil {
		t.Errorf("a missing HostConfig is the default one: %v %+v", err, req)
	}
	for body, want := range map[string]string{
		``:                       "empty",
		`{`:                      "invalid JSON",
		`{"Image":"busybox"} {}`: "after the JSON",
		`[]`:                     "invalid JSON",
		`{}`:                     "config cannot be empty",
		`{"Cmd":["x"]}`:          "no image",
		`{"Image":1}`:            "invalid JSON",
		`{"Image":"b","HostConfig":{"Memory":-1}}`:        "cannot be negative",
		`{"Image":"b","HostConfig":{"Tmpfs":{"rel":""}}}`: "absolute",
		`{"Image":"b","ExposedPorts":{"notaport":{}}}`:    "invalid JSON",
	} {
		_, err := decodeCreate([]byte(body))
		if err == nil || !strings.Contains(err.Error(), want) || !errdefs.IsInvalidArgument(err) {
			t.Errorf("body %q: error %v, want a 400 saying %q", body, err, want)
		}
	}
}

func FuzzDecodeCreate(f *testing.F) {
	for _, s := range []string{`{"Image":"busybox","Cmd":["echo","hi"]}`, `{}`, `{"Image":"b","HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"8080"}]}}}`,
		`{"Image":"b","ExposedPorts":{"80/udp":{}},"HostConfig":{"Tmpfs":{"/t":"size=1m"},"Resources":{"PidsLimit":5}}}`, `{"Image":"b","Healthcheck":{"Test":["CMD","x"],"Interval":1}}`,
		`{"Image":"b","HostConfig":{"Dns":["1.2.3.4"],"Mounts":[{"Type":"bind","Source":"/x","Target":"/y"}]}}`, `[`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeCreate(body)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("a bad body must be a 400, got %v", err)
			}
			return
		}
		// What decodes must go through the checks and the completion without a panic.
		checkHostConfig(req.HostConfig, req.Config)
		completeConfig(req.Config, ocispec.ImageConfig{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}, ExposedPorts: map[string]struct{}{"80/tcp": {}}})
	})
}

func FuzzParseFilters(f *testing.F) {
	for _, s := range []string{`{"label":{"a=b":true}}`, `{"name":["web"]}`, `{"status":{"running":true,"exited":false}}`, `{`, `{"label":[1]}`, `{"x":{"y":true}}`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fl, err := parseFilters(s, listFilters...)
		if err != nil {
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("bad filters must be a 400, got %v", err)
			}
			return
		}
		rec := record{ID: "abc", Name: "n", Image: "docker.io/library/busybox:latest", ImageID: "sha256:abc",
			Config: &container.Config{Labels: map[string]string{"a": "b"}}, State: state{Status: container.StateRunning}}
		matchContainer(fl, nil, rec)
	})
}

func TestParseFilters(t *testing.T) {
	f, err := parseFilters(`{"label":{"a=b":true,"c":true,"off":false},"name":["web"]}`, "label", "name")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(f["label"], ",") != "a=b,c" || strings.Join(f["name"], ",") != "web" {
		t.Errorf("got %v", f)
	}
	if !f.matchLabel(map[string]string{"a": "b", "c": ""}) || f.matchLabel(map[string]string{"a": "x", "c": ""}) || f.matchLabel(map[string]string{"a": "b"}) {
		t.Error("label filters: key=value must match the value, key alone the key")
	}
	if _, err := parseFilters(`{"nope":["x"]}`, "label"); err == nil || !strings.Contains(err.Error(), "invalid filter 'nope'") {
		t.Errorf("an unknown filter: %v", err)
	}
}

func TestMatchContainer(t *testing.T) {
	rec := record{ID: "0123abcd", Name: "web-1", Image: "docker.io/library/busybox:latest", ImageID: "sha256:feed",
		Config: &container.Config{Labels: map[string]string{"app": "x"}}, State: state{Status: container.StateExited, ExitCode: 3}}
	for q, want := range map[string]bool{
		`{"name":["web"]}`: true, `{"name":["^/web-1$"]}`: true, `{"name":["^/web$"]}`: false, `{"name":["db"]}`: false,
		`{"status":["exited"]}`: true, `{"status":["running"]}`: false, `{"id":["0123"]}`: true, `{"id":["abcd"]}`: false,
		`{"ancestor":["busybox"]}`: true, `{"ancestor":["busybox:latest"]}`: true, `{"ancestor":["sha256:fe"]}`: true, `{"ancestor":["debian"]}`: false,
		`{"label":["app=x"]}`: true, `{"label":["app=y"]}`: false, `{"name":["web"],"status":["running"]}`: false,
	} {
		f, err := parseFilters(q, listFilters...)
		if err != nil {
			t.Fatal(err)
		}
		if got := matchContainer(f, nil, rec); got != want {
			t.Errorf("%s: matched %v, want %v", q, got, want)
		}
	}
	if matchContainer(filters{}, []int{0}, rec) || !matchContainer(filters{}, []int{3}, rec) {
		t.Error("exited=N must match the exit code")
	}
}

func TestCompleteConfig(t *testing.T) {
	img := ocispec.ImageConfig{Entrypoint: []string{"/entry"}, Cmd: []string{"default"}, Env: []string{"PATH=/bin", "A=1"}, WorkingDir: "/w", User: "nobody",
		Labels: map[string]string{"l": "img"}}
	for _, c := range []struct {
		entry, cmd []string
		want       string
	}{
		{nil, nil, "/entry default"},
		{nil, []string{"x"}, "/entry x"},
		{[]string{"/e2"}, nil, "/e2"},
		{[]string{"/e2"}, []string{"y"}, "/e2 y"},
		{[]string{""}, []string{"sh"}, "sh"},
	} {
		cfg, path, args, err := completeConfig(&container.Config{Entrypoint: c.entry, Cmd: c.cmd, Env: []string{"A=2", "B=3"}, Labels: map[string]string{"l": "req"}}, img)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(append([]string{path}, args...), " "); got != c.want {
			t.Errorf("entrypoint %q cmd %q: command %q, want %q", c.entry, c.cmd, got, c.want)
		}
		if strings.Join(cfg.Env, " ") != "PATH=/bin A=2 B=3" || cfg.WorkingDir != "/w" || cfg.User != "nobody" || cfg.Labels["l"] != "req" {
			t.Errorf("completed config %+v", cfg)
		}
	}
	if _, _, _, err := completeConfig(&container.Config{}, ocispec.ImageConfig{}); err == nil || !errdefs.IsInvalidArgument(err) {
		t.Errorf("no command at all must be a 400: %v", err)
	}
}

func TestCheckHostConfig(t *testing.T) {
	yes := true
	for name, hc := range map[string]container.HostConfig{
		"privileged": {Privileged: true}, "pid host": {PidMode: "host"}, "net host": {NetworkMode: "host"},
		"cap sys_admin": {CapAdd: []string{"SYS_ADMIN"}}, "device": {Resources: container.Resources{Devices: []container.DeviceMapping{{PathOnHost: "/dev/kvm"}}}},
		"seccomp": {SecurityOpt: []string{"seccomp=unconfined"}}, "apparmor": {SecurityOpt: []string{"apparmor:unconfined"}},
		"sysctl": {Sysctls: map[string]string{"net.ipv4.ip_forward": "1"}}, "masked": {MaskedPaths: []string{}},
	} {
		if _, err := checkHostConfig(&hc, &container.Config{}); !errdefs.IsPermissionDenied(err) {
			t.Errorf("%s: %v, want a 403", name, err)
		}
	}
	for name, hc := range map[string]container.HostConfig{
		"default": {}, "cap chown": {CapAdd: []string{"CAP_CHOWN"}}, "nnp": {SecurityOpt: []string{"no-new-privileges:true"}},
		"bridge": {NetworkMode: "bridge"}, "none": {NetworkMode: "none"}, "init": {Init: &yes},
	} {
		if _, err := checkHostConfig(&hc, &container.Config{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// A network's name is checked at create, against the engine's networks (network.go).
	if _, err := checkHostConfig(&container.HostConfig{NetworkMode: "mynet"}, &container.Config{}); err != nil {
		t.Errorf("a user network's name: %v", err)
	}
}
