package snapshot

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestProbeOverlay mounts a real overlay in a user namespace. The kernels moatc supports
// rootless (5.11 and later) allow it on ext4, xfs and tmpfs; a failure must say what failed.
func TestProbeOverlay(t *testing.T) {
	dir := t.TempDir()
	if err := ProbeOverlay(dir); err != nil {
		t.Fatalf("overlayfs in a user namespace on %s: %v", kernelID(), err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("the probe left %v in the directory", ents)
	}
	// An upper layer on a filesystem that cannot hold one fails, and says why.
	ro := filepath.Join(dir, "file")
	os.WriteFile(ro, nil, 0o644)
	if err := ProbeOverlay(ro); err == nil || !strings.Contains(err.Error(), "probing overlayfs") {
		t.Errorf("a probe in a file rather than a directory: %v", err)
	}
}

// TestChoiceCached: rootless, the probe's result is kept in the home for the running kernel,
// read back without probing, and probed again when the kernel differs.
func TestChoiceCached(t *testing.T) {
	t.Setenv("MOATC_SNAPSHOTTER", "")
	home := t.TempDir()
	Configure(home, true)
	t.Cleanup(func() { Configure("", false) })
	c := Current()
	if c.Snapshotter != "overlayfs" || c.Kernel != kernelID() {
		t.Fatalf("first choice: %+v", c)
	}
	var cached Choice
	b, err := os.ReadFile(filepath.Join(home, CacheFile))
	if err != nil || json.Unmarshal(b, &cached) != nil || cached != c {
		t.Fatalf("cache %s: %v %q", CacheFile, err, b)
	}
	// A cached native for this kernel is used as is (no probe would give native here).
	b, _ = json.Marshal(Choice{Snapshotter: "native", Reason: "cached", Kernel: kernelID()})
	os.WriteFile(filepath.Join(home, CacheFile), b, 0o644)
	Configure(home, true)
	if got := Default(); got != "native" {
		t.Errorf("with a cached native for this kernel: %s", got)
	}
	// Another kernel's result is probed again.
	b, _ = json.Marshal(Choice{Snapshotter: "native", Reason: "cached", Kernel: "4.19.0 #1"})
	os.WriteFile(filepath.Join(home, CacheFile), b, 0o644)
	Configure(home, true)
	if got := Current(); got.Snapshotter != "overlayfs" || got.Kernel != kernelID() {
		t.Errorf("with another kernel's result cached: %+v", got)
	}
	// As root, and with MOATC_SNAPSHOTTER, no probe and no cache.
	Configure(home, false)
	if got := Default(); got != "overlayfs" {
		t.Errorf("as root: %s", got)
	}
	t.Setenv("MOATC_SNAPSHOTTER", "native")
	Configure(t.TempDir(), true)
	if got := Current(); got.Snapshotter != "native" || !strings.Contains(got.Reason, "MOATC_SNAPSHOTTER") {
		t.Errorf("with MOATC_SNAPSHOTTER=native: %+v", got)
	}
}
