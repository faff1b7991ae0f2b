// Package e2e proves moatc on the real stack: a managed containerd from the prefix, runc and
// gVisor, images made locally. Nothing is mocked. In CI (CI=true) a missing prerequisite is a
// failure, never a skip.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var (
	moatc    string // the binary under test
	home     string // MOATC_HOME of this test run
	prefix   string // the installed stack
	repo     string // the source tree
	setupErr error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Dir(filepath.Dir(file))
	prefix = os.Getenv("MOATC_PREFIX")
	if prefix == "" {
		prefix = "/opt/moatc"
	}
	// Short: containerd's socket path must stay under 108 bytes.
	var err error
	home, err = os.MkdirTemp("/tmp", "moatc-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	bin := filepath.Join(home, "moatc")
	build := exec.Command("go", "build", "-o", bin, "./cmd/moatc")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building moatc: %v\n%s", err, out)
		return 1
	}
	// moatc-reaper goes next to moatc, where the engine finds it (testcontainers' reaper image).
	// moatc-pause too: a warm pool sandbox's only process.
	for _, name := range []string{"moatc-reaper", "moatc-pause"} {
		b := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(home, name), "./cmd/"+name)
		b.Dir, b.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := b.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", name, err, out)
			return 1
		}
	}
	moatc = bin
	// Runs start cold unless a test turns the warm pool on (pool_test.go): the other tests
	// count what a run leaves, and their homes must not gain background fills.
	os.Setenv("MOATC_WARM_POOL", "0")
	os.Setenv("MOATC_HOME", home)
	os.Setenv("MOATC_PREFIX", prefix)
	os.Unsetenv("MOATC_CONTAINERD_ADDRESS")
	setupErr = prepare()
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// prepare checks the stack is installed and imports the base images.
func prepare() error {
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc", "runsc", "containerd-shim-runsc-v1"} {
		if _, err := os.Stat(filepath.Join(prefix, "bin", b)); err != nil {
			return fmt.Errorf("%s is not installed in %s: run `make setup`", b, prefix)
		}
	}
	cmd := exec.Command("bash", filepath.Join(repo, "scripts/base-images.sh"))
	cmd.Env = append(os.Environ(), "MOATC="+moatc)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("making base images: %v\n%s", err, out)
	}
	return nil
}

// teardown removes what the tests made and stops the managed containerd, leaving no mounts.
func teardown() error {
	errs := teardownRootless()
	// Runs a failed test left running are killed first; clean leaves active runs alone.
	if out, err := exec.Command(moatc, "list", "--json").Output(); err == nil {
		var runs []runRecord
		json.Unmarshal(out, &runs)
		for _, r := range runs {
			if r.State == "running" || r.State == "created" || r.State == "stopping" {
				if out, err := exec.Command(moatc, "destroy", "--force", r.ID).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Sprintf("destroying %s: %v: %s", r.ID, err, out))
				}
			}
		}
	}
	if out, err := exec.Command(moatc, "clean").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Sprintf("moatc clean: %v: %s", err, out))
	}
	if out, err := exec.Command(moatc, "system", "stop", "--force").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Sprintf("moatc system stop: %v: %s", err, out))
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mounts), "\n") {
		if strings.Contains(l, home) {
			errs = append(errs, "mount left behind: "+l)
		}
	}
	if len(errs) == 0 {
		os.RemoveAll(home)
		return nil
	}
	return fmt.Errorf("%s (home kept: %s)", strings.Join(errs, "; "), home)
}

// requireStack fails (in CI) or skips (elsewhere) when the stack is not there.
func requireStack(t *testing.T) {
	t.Helper()
	if setupErr == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing in CI: %v", setupErr)
	}
	t.Skipf("prerequisite missing (not CI, so skipping): %v", setupErr)
}

// result is one finished moatc command.
type result struct {
	stdout, stderr string
	code           int
}

type opts struct {
	stdin   string
	env     []string
	dir     string
	timeout time.Duration // default 3 minutes
}

func moatcRun(t *testing.T, o opts, args ...string) result {
	t.Helper()
	limit := o.timeout
	if limit == 0 {
		limit = 3 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, moatc, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if o.stdin != "" {
		cmd.Stdin = strings.NewReader(o.stdin)
	}
	cmd.Env = append(os.Environ(), o.env...)
	cmd.Dir = o.dir
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("moatc %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// mustRun runs moatc and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) result {
	t.Helper()
	r := moatcRun(t, opts{}, args...)
	if r.code != 0 {
		t.Fatalf("moatc %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r
}

// sandboxArgs selects the runtime under test.
func sandboxArgs(rt string) []string {
	if rt == "runc" {
		return []string{"--no-sandbox"}
	}
	return nil
}

var runtimes = []string{"gvisor", "runc"}

// workspace makes an empty workspace directory.
func workspace(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(home, "ws-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type runRecord struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	State       string `json:"state"`
	ExitCode    *int   `json:"exit_code"`
	Error       string `json:"error"`
	Output      string `json:"output"`
	ContainerID string `json:"container_id"`
	IP          string `json:"ip"`
	Gateway     string `json:"gateway"`
	Spec        struct {
		Runtime string `json:"runtime"`
		Image   string `json:"image"`
	} `json:"spec"`
}

func status(t *testing.T, ref string) runRecord {
	t.Helper()
	var r runRecord
	decodeJSON(t, mustRun(t, "status", "--json", ref).stdout, &r)
	return r
}

func list(t *testing.T) []runRecord {
	t.Helper()
	var rs []runRecord
	decodeJSON(t, mustRun(t, "list", "--json").stdout, &rs)
	return rs
}

// decodeJSON decodes a command's --json output, failing the test when it is not JSON.
func decodeJSON(t *testing.T, out string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("decoding %T: %v\n%s", v, err, out)
	}
}

// ctr runs containerd's own client against the managed daemon, as an independent witness.
func ctr(t *testing.T, args ...string) string {
	t.Helper()
	full := append([]string{"-a", filepath.Join(home, "containerd", "containerd.sock"), "-n", "moatc"}, args...)
	out, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), full...).Output()
	if err != nil {
		t.Fatalf("ctr %v: %v", args, err)
	}
	return string(out)
}

// ctrRows returns ctr's listing rows without the header.
func ctrRows(t *testing.T, args ...string) []string {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(ctr(t, args...)), "\n")
	return lines[1:]
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// busyboxRun is `moatc run FLAGS [--no-sandbox] --image busybox WS -- CMD...` for runtime rt.
func busyboxRun(rt string, flags []string, ws string, cmd ...string) []string {
	args := append(append([]string{"run"}, flags...), sandboxArgs(rt)...)
	return append(append(args, "--image", "busybox", ws, "--"), cmd...)
}
