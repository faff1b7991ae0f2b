package run

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moatc/moatc/config"
)

func TestLimitsDecision(t *testing.T) {
	all := []string{MemoryController, CPUController, PidsController}
	for _, c := range []struct {
		name  string
		l     Limits
		allow []string
		why   []string // in Why of the first refused controller
	}{
		{"root", Limits{}, all, nil},
		{"root on cgroup v2", Limits{CgroupV2: true}, all, nil},
		{"rootless, cgroup v1", Limits{Rootless: true}, nil, []string{"cgroup v1", "cgroup v2", "Delegate=yes", "as root"}},
		{"rootless, v2, not delegated", Limits{Rootless: true, CgroupV2: true, Cgroup: "/user.slice/user-1001.slice/session-3.scope"},
			nil, []string{"session-3.scope", "not delegated", "systemd-run --user"}},
		{"rootless, v2, some delegated", Limits{Rootless: true, CgroupV2: true, Cgroup: "/u", Delegated: []string{"memory", "pids"}},
			[]string{"memory", "pids"}, []string{"the cpu controller", "offers memory pids"}},
		{"rootless, v2, delegated", Limits{Rootless: true, CgroupV2: true, Cgroup: "/u", Delegated: []string{"cpuset", "cpu", "io", "memory", "pids"}}, all, nil},
	} {
		var refused []string
		for _, ctl := range all {
			if got, want := c.l.Allows(ctl), slices.Contains(c.allow, ctl); got != want {
				t.Errorf("%s: Allows(%s) = %v, want %v", c.name, ctl, got, want)
			}
			if why := c.l.Why(ctl); (why == "") != c.l.Allows(ctl) {
				t.Errorf("%s: Why(%s) = %q with Allows %v", c.name, ctl, why, c.l.Allows(ctl))
			}
			if !c.l.Allows(ctl) {
				refused = append(refused, ctl)
			}
		}
		if c.l.Available() != (len(refused) == 0) {
			t.Errorf("%s: Available() = %v with %v refused", c.name, c.l.Available(), refused)
		}
		if len(refused) > 0 {
			why := c.l.Why(refused[0])
			for _, w := range c.why {
				if !strings.Contains(why, w) {
					t.Errorf("%s: Why(%s) = %q lacks %q", c.name, refused[0], why, w)
				}
			}
			if s := c.l.Summary(); strings.HasPrefix(s, "available") {
				t.Errorf("%s: Summary() = %q", c.name, s)
			}
		} else if s := c.l.Summary(); !strings.HasPrefix(s, "available") {
			t.Errorf("%s: Summary() = %q", c.name, s)
		}
	}
}

// TestResolveRootlessLimits: rootless on cgroup v1, limits are refused (flags as usage errors,
// moatc.yaml keys as errors of the file) and the default pids limit is not applied.
func TestResolveRootlessLimits(t *testing.T) {
	v1 := &Limits{Rootless: true}
	f := func(v float64) *float64 { return &v }
	i := func(v int64) *int64 { return &v }
	yes := true
	for name, o := range map[string]Options{
		"--memory 64m": {Memory: "64m"}, "--cpus 1.5": {CPUs: f(1.5)}, "--pids-limit 100": {Pids: i(100), NoSandbox: &yes},
	} {
		o.Limits = v1
		_, err := resolveIn(t, "", o)
		if !isUsage(err) || !strings.HasPrefix(err.Error(), name+" cannot be applied") || !strings.Contains(err.Error(), "cgroup v1") ||
			!strings.Contains(err.Error(), "as root") {
			t.Errorf("%s: got %v, want a usage error saying why and what would work", name, err)
		}
	}
	for key, yaml := range map[string]string{
		"container.memory 512 MB": "container:\n  memory: 512m\n",
		"container.cpus 2":        "container:\n  cpus: 2\n",
		"container.pids 64":       "container:\n  pids: 64\n",
	} {
		_, err := resolveIn(t, yaml, Options{Limits: v1, NoSandbox: &yes})
		if err == nil || isUsage(err) || !strings.Contains(err.Error(), "moatc.yaml: "+key+" cannot be applied") || !strings.Contains(err.Error(), "cgroup v1") {
			t.Errorf("%s in moatc.yaml: got %v, want an error of the file", key, err)
		}
	}
	// A flag beats the file: --pids-limit -1 lifts the file's limit, and so nothing is refused.
	if req, err := resolveIn(t, "container:\n  pids: 64\n", Options{Limits: v1, Pids: i(-1)}); err != nil || req.Spec.Pids != 0 {
		t.Errorf("--pids-limit -1 over container.pids: %v, pids %d", err, req.Spec.Pids)
	}
	// Under gVisor a pids limit needs no cgroup: the Sentry holds it as RLIMIT_NPROC.
	if req, err := resolveIn(t, "container:\n  pids: 64\n", Options{Limits: v1}); err != nil || req.Spec.Pids != 64 {
		t.Errorf("container.pids under gVisor: %v, pids %d", err, req.Spec.Pids)
	}
	req, err := resolveIn(t, "", Options{Limits: v1})
	if err != nil || req.Spec.Pids != 0 || req.Spec.Memory != 0 || req.Spec.CPUs != 0 {
		t.Errorf("rootless without limits: %v, spec %+v", err, req.Spec)
	}
	req, err = resolveIn(t, "", Options{Limits: &Limits{}})
	if err != nil || req.Spec.Pids != config.DefaultPids {
		t.Errorf("as root the default pids limit applies: %v, pids %d", err, req.Spec.Pids)
	}
	// cgroup v2 with memory and pids delegated: those apply (the default too), cpu does not.
	v2 := &Limits{Rootless: true, CgroupV2: true, Cgroup: "/u", Delegated: []string{"memory", "pids"}}
	req, err = resolveIn(t, "", Options{Limits: v2, Memory: "64m"})
	if err != nil || req.Spec.Memory != 64<<20 || req.Spec.Pids != config.DefaultPids {
		t.Errorf("v2, delegated memory: %v, spec %+v", err, req.Spec)
	}
	if _, err := resolveIn(t, "", Options{Limits: v2, CPUs: f(1)}); !isUsage(err) || !strings.Contains(err.Error(), "cpu controller") {
		t.Errorf("v2, --cpus without the cpu controller: %v", err)
	}
}

func TestDelegation(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "user.slice", "user@1001.service")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte("cpu io memory pids\n"), 0o444)
	cg, ctl := delegation(root, "0::/user.slice/user@1001.service\n")
	if cg != "/user.slice/user@1001.service" || !slices.Equal(ctl, []string{"cpu", "io", "memory", "pids"}) {
		t.Errorf("delegated cgroup: %q %v", cg, ctl)
	}
	if cg, ctl := delegation(root, "0::/user.slice/gone\n"); cg != "/user.slice/gone" || ctl != nil {
		t.Errorf("a cgroup that is not there: %q %v", cg, ctl)
	}
	if cg, ctl := delegation(root, "4:memory:/\n"); cg != "" || ctl != nil {
		t.Errorf("no unified line: %q %v", cg, ctl)
	}
}
