package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDoctor(t *testing.T) {
	requireStack(t)
	r := moatcRun(t, opts{}, "doctor", "--json")
	seen := requireChecks(t, r.stdout)
	for _, want := range []string{"containerd reachable", "probe run under gvisor", "probe run under runc", "runsc", "containerd-shim-runsc-v1", "CNI plugins", "buildkitd", "kernel: overlayfs", "/dev/kvm", "proxy CA", "credential store"} {
		if !seen[want] {
			t.Errorf("doctor has no %q check", want)
		}
	}
	if r.code != 0 {
		t.Errorf("doctor exit %d on a working stack", r.code)
	}
	// A credential store writable by others, and a CA key readable by them: both said, with the exit 1.
	bh := filepath.Join(t.TempDir(), "home")
	os.MkdirAll(filepath.Join(bh, "proxy"), 0o700)
	os.WriteFile(filepath.Join(bh, "grants.json"), []byte(`{"version":1,"grants":[]}`), 0o666)
	os.Chmod(filepath.Join(bh, "grants.json"), 0o666)
	os.WriteFile(filepath.Join(bh, "proxy", "ca-key.pem"), []byte("not a key"), 0o644)
	os.WriteFile(filepath.Join(bh, "proxy", "ca.pem"), []byte("not a cert"), 0o644)
	// A containerd address that is not there: this home must not start a daemon of its own.
	sick := moatcRun(t, opts{}, "--home", bh, "--address", filepath.Join(bh, "none.sock"), "doctor", "--json")
	var sickChecks []struct {
		Name   string
		OK     bool
		Detail string
	}
	json.Unmarshal([]byte(sick.stdout), &sickChecks)
	failed := map[string]bool{}
	for _, c := range sickChecks {
		if !c.OK {
			failed[c.Name] = true
		}
	}
	if !failed["proxy CA"] || !failed["credential store"] || sick.code != 1 {
		t.Errorf("doctor with a broken CA and store: exit %d\n%s", sick.code, sick.stdout)
	}
	// A prefix without the stack: every missing part fails with its fix, and the exit is 1.
	fake := t.TempDir()
	os.MkdirAll(filepath.Join(fake, "bin"), 0o755)
	bad := moatcRun(t, opts{env: []string{"MOATC_PREFIX=" + fake, "MOATC_HOME=" + filepath.Join(fake, "home"), "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}}, "doctor")
	if bad.code != 1 || !strings.Contains(bad.stdout, "FAIL") || !strings.Contains(bad.stdout, "make setup") {
		t.Errorf("doctor on an empty prefix: exit %d\n%s%s", bad.code, bad.stdout, bad.stderr)
	}
}

func TestNetworkPoolClash(t *testing.T) {
	requireStack(t)
	before := hostNetState(t)
	r := moatcRun(t, opts{env: []string{"MOATC_NETWORK_POOL=192.0.0.0/16"}}, "run", "--no-sandbox", "--image", "busybox", workspace(t), "--", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "overlaps the host route") || !strings.Contains(r.stderr, "MOATC_NETWORK_POOL") {
		t.Errorf("pool clash: exit %d %q", r.code, r.stderr)
	}
	if after := hostNetState(t); after != before {
		t.Errorf("a refused network left state: %s, before %s", after, before)
	}
}

// requireChecks decodes doctor --json, fails the test for every required check that failed,
// and returns the names of the checks seen.
func requireChecks(t *testing.T, out string) map[string]bool {
	t.Helper()
	var checks []struct {
		Name     string
		OK       bool
		Detail   string
		Optional bool
	}
	decodeJSON(t, out, &checks)
	seen := map[string]bool{}
	for _, c := range checks {
		seen[c.Name] = true
		if !c.OK && !c.Optional {
			t.Errorf("doctor: check %s failed: %s", c.Name, c.Detail)
		}
	}
	return seen
}
