package ctrd

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// specOf builds the spec CreateContainer would send, minus the image's config.
func specOf(t *testing.T, c Container) *specs.Spec {
	t.Helper()
	opts, err := c.specOpts()
	if err != nil {
		t.Fatal(err)
	}
	ctx := namespaces.WithNamespace(context.Background(), "ns")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: c.ID}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func nproc(s *specs.Spec) (uint64, bool) {
	for _, r := range s.Process.Rlimits {
		if r.Type == "RLIMIT_NPROC" {
			return r.Hard, true
		}
	}
	return 0, false
}

func TestRootlessSpecHasNoCgroup(t *testing.T) {
	for _, rt := range []Runtime{Runc{}, GVisor{}} {
		t.Run(rt.Name(), func(t *testing.T) {
			c := Container{ID: "c1", Runtime: rt, Args: []string{"sh"}, Pids: 4096}

			// Rootful: containerd's cgroup path and the pids limit in the cgroup.
			s := specOf(t, c)
			if s.Linux.CgroupsPath != "/ns/c1" || s.Linux.Resources.Pids == nil {
				t.Fatalf("rootful: cgroups path %q, pids %+v", s.Linux.CgroupsPath, s.Linux.Resources.Pids)
			}
			devices := s.Linux.Resources.Devices
			if len(devices) == 0 {
				t.Fatal("containerd's default spec has no device rules")
			}

			c.Rootless = true
			if g, ok := rt.(GVisor); ok {
				g.Rootless = true
				c.Runtime = g
			}
			s = specOf(t, c)
			if s.Linux.CgroupsPath != "" {
				t.Errorf("rootless: cgroups path %q", s.Linux.CgroupsPath)
			}
			want := specs.LinuxResources{Devices: devices}
			if r := s.Linux.Resources; r == nil || r.Pids != nil || r.Memory != nil || r.CPU != nil || r.BlockIO != nil ||
				len(r.HugepageLimits) > 0 || r.Network != nil || len(r.Unified) > 0 || len(r.Rdma) > 0 || len(r.Devices) != len(want.Devices) {
				t.Errorf("rootless: resources %+v, want only the device rules %+v", r, want.Devices)
			}
			// gVisor's Sentry enforces RLIMIT_NPROC itself, so the limit holds rootless too.
			n, ok := nproc(s)
			if _, gvisor := rt.(GVisor); gvisor && (!ok || n != 4096) {
				t.Errorf("rootless gVisor: RLIMIT_NPROC %d %v, want 4096", n, ok)
			}
		})
	}
}

func TestRootlessRefusesLimits(t *testing.T) {
	for _, c := range []Container{
		{ID: "m", Runtime: Runc{}, Memory: 64 << 20},
		{ID: "c", Runtime: Runc{}, CPUs: 1.5},
		{ID: "g", Runtime: GVisor{Rootless: true}, Memory: 64 << 20, CPUs: 1},
	} {
		c.Rootless = true
		_, err := c.specOpts()
		if err == nil {
			t.Errorf("%s: a limit was accepted rootless", c.ID)
			continue
		}
		if c.Memory > 0 && !strings.Contains(err.Error(), "--memory") {
			t.Errorf("%s: %v does not name --memory", c.ID, err)
		}
		if c.CPUs > 0 && !strings.Contains(err.Error(), "--cpus") {
			t.Errorf("%s: %v does not name --cpus", c.ID, err)
		}
		// Rootful, the same limits reach the spec.
		c.Rootless = false
		if g, ok := c.Runtime.(GVisor); ok {
			g.Rootless = false
			c.Runtime = g
		}
		s := specOf(t, c)
		if c.Memory > 0 && (s.Linux.Resources.Memory == nil || *s.Linux.Resources.Memory.Limit != c.Memory) {
			t.Errorf("%s rootful: memory %+v", c.ID, s.Linux.Resources.Memory)
		}
		if c.CPUs > 0 && (s.Linux.Resources.CPU == nil || s.Linux.Resources.CPU.Quota == nil) {
			t.Errorf("%s rootful: cpu %+v", c.ID, s.Linux.Resources.CPU)
		}
	}
}

func TestRootlessMustMatchGVisor(t *testing.T) {
	for _, c := range []Container{
		{ID: "a", Runtime: GVisor{Rootless: true}},
		{ID: "b", Runtime: GVisor{}, Rootless: true},
	} {
		if _, err := c.specOpts(); err == nil || !strings.Contains(err.Error(), "Rootless") {
			t.Errorf("%s: mismatch accepted (%v)", c.ID, err)
		}
	}
}

func TestGVisorRootlessConfig(t *testing.T) {
	prefix := t.TempDir()
	os.MkdirAll(filepath.Join(prefix, "bin"), 0o755)
	if err := os.WriteFile(filepath.Join(prefix, "bin", "runsc"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	g := GVisor{Prefix: prefix, Dir: t.TempDir()}
	rootful, err := g.Config()
	if err != nil {
		t.Fatal(err)
	}
	g.Rootless = true
	rootless, err := g.Config()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(rootful, "ignore-cgroups") {
		t.Errorf("rootful config ignores cgroups:\n%s", rootful)
	}
	if !strings.Contains(rootless, "\n  ignore-cgroups = \"true\"\n") {
		t.Errorf("rootless config lacks ignore-cgroups:\n%s", rootless)
	}
	// A different config is a different file: a rootful shim never reads a rootless one.
	if g.configPath(rootful) == g.configPath(rootless) {
		t.Error("rootful and rootless configs share a file")
	}
	if f := g.Flags(); !strings.Contains(f, `ignore-cgroups="true"`) {
		t.Errorf("Flags() = %s", f)
	}
}
