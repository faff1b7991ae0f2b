package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSeccompAnswers: the default seccomp profile answers the same under both runtimes: the
// calls it denies are EPERM, the ones it allows pass. Under gVisor a call the Sentry does not
// implement (fchmodat2) is ENOSYS, so programs fall back (the Docker CLI's cp did not: runsc
// drops the names it does not know from the profile, whose default then answered EPERM).
func TestSeccompAnswers(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	if out, err := exec.Command("go", "build", "-C", repo, "-o", filepath.Join(ws, "sysprobe"), "./e2e/sysprobe").CombinedOutput(); err != nil {
		t.Fatalf("building e2e/sysprobe: %v\n%s", err, out)
	}
	denied := []string{"keyctl", "add_key", "request_key", "bpf", "userfaultfd", "perf_event_open", "open_by_handle_at", "acct", "kexec_load"}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			res := moatcRun(t, opts{}, busyboxRun(rt, nil, ws, "/workspace/sysprobe")...)
			if res.code != 0 {
				t.Fatalf("sysprobe: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
			}
			got := map[string]string{}
			for _, l := range strings.Split(strings.TrimSpace(res.stdout), "\n") {
				if k, v, ok := strings.Cut(l, "="); ok {
					got[k] = v
				}
			}
			for _, n := range denied {
				if got[n] != "EPERM" {
					t.Errorf("%s: %q; want EPERM (denied by the profile)", n, got[n])
				}
			}
			if got["getpid"] != "0" {
				t.Errorf("getpid: %q; want 0", got["getpid"])
			}
			want := "0"
			if rt == "gvisor" {
				want = "ENOSYS"
			}
			if got["fchmodat2"] != want {
				t.Errorf("fchmodat2: %q; want %s", got["fchmodat2"], want)
			}
		})
	}
}
