// Package kube proves `moatc kube` against a real single-node Kubernetes cluster that this
// test binary starts on the host (kube-apiserver, kube-scheduler, kube-controller-manager,
// kubelet, etcd and a containerd of its own with runc and gVisor) and removes again, leaving
// the host as it found it. scripts/kube-setup.sh installs the cluster's binaries. In CI (CI=true) a missing
// prerequisite is a failure, never a skip.
package kube

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

var (
	moatc  string // the binary under test, built by TestMain
	home   string // MOATC_HOME of this test run
	prefix string // the installed stack (MOATC_PREFIX)
	repo   string // the source tree
)

// helperBinaries are built next to moatc, where it finds them.
var helperBinaries = []string{"moatc-pause", "moatc-pod"}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	_, file, _, _ := runtime.Caller(0)
	repo = filepath.Dir(filepath.Dir(filepath.Dir(file)))
	prefix = os.Getenv("MOATC_PREFIX")
	if prefix == "" {
		prefix = "/opt/moatc"
	}
	// Short: containerd's socket path under the home must stay under 108 bytes.
	var err error
	home, err = os.MkdirTemp("/tmp", "moatc-kube-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := buildMoatc(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(home)
		return 1
	}
	// Runs start cold: a warm pool would fill in the background and outlive the tests.
	os.Setenv("MOATC_WARM_POOL", "0")
	os.Setenv("MOATC_HOME", home)
	os.Setenv("MOATC_PREFIX", prefix)
	os.Unsetenv("MOATC_CONTAINERD_ADDRESS")
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "kube e2e teardown: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// buildMoatc builds moatc and its helper binaries into home.
func buildMoatc() error {
	bin := filepath.Join(home, "moatc")
	build := exec.Command("go", "build", "-o", bin, "./cmd/moatc")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building moatc: %v\n%s", err, out)
	}
	for _, name := range helperBinaries {
		b := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(home, name), "./cmd/"+name)
		b.Dir, b.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
		if out, err := b.CombinedOutput(); err != nil {
			return fmt.Errorf("building %s: %v\n%s", name, err, out)
		}
	}
	moatc = bin
	return nil
}

// teardown stops the cluster (if a test started it), then what moatc itself may have started
// with this home, and fails when anything is left behind.
func teardown() error {
	var errs []error
	// moatc's own daemons first: its buildkitd's RUN steps share libcni's /var/lib/cni with
	// the cluster, whose clean-up then finds only its own entries there.
	if out, err := exec.Command(moatc, "clean").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("moatc clean: %v: %s", err, out))
	}
	if out, err := exec.Command(moatc, "system", "stop", "--force").CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("moatc system stop: %v: %s", err, out))
	}
	if theCluster != nil {
		if err := theCluster.stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping the cluster: %w", err))
		}
	}
	for _, m := range mountsUnder(home) {
		errs = append(errs, fmt.Errorf("mount left behind: %s", m))
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w (home kept: %s)", errors.Join(errs...), home)
	}
	os.RemoveAll(home)
	return nil
}

// inCI says whether a missing prerequisite must fail rather than skip.
func inCI() bool { return strings.EqualFold(os.Getenv("CI"), "true") }
