// Package snapshot chooses the snapshotter runs use and turns a root filesystem directory into
// an OCI image, so images can be made where no registry is reachable.
package snapshot

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/moatc/moatc/internal/atomicfile"
)

// Choice is the snapshotter moatc uses for runs, image unpacks and builds, and why.
type Choice struct {
	Snapshotter string `json:"snapshotter"`
	Reason      string `json:"reason"`
	// Kernel is the kernel a rootless probe ran on: a cached probe holds for it only.
	Kernel string `json:"kernel,omitempty"`
}

// CacheFile is where, in moatc's home, a rootless moatc keeps the probe's result.
const CacheFile = "snapshotter.json"

var chosen struct {
	sync.Mutex
	home     string
	rootless bool
	choice   *Choice
}

// Configure says where moatc's home is and whether moatc runs rootless; every command calls
// it before using the stack. Without it Default is overlayfs, as for root.
func Configure(home string, rootless bool) {
	chosen.Lock()
	defer chosen.Unlock()
	chosen.home, chosen.rootless, chosen.choice = home, rootless, nil
}

// Default is the snapshotter for runs and image unpacks (see Current).
func Default() string { return Current().Snapshotter }

// Current is the snapshotter moatc uses: MOATC_SNAPSHOTTER when set; overlayfs as root;
// rootless, overlayfs when the kernel lets a user namespace mount it on the home's filesystem
// (kernel 5.11 and later), native otherwise. The rootless probe is a real mount, made once
// per kernel and remembered in the home's CacheFile.
func Current() Choice {
	if s := os.Getenv("MOATC_SNAPSHOTTER"); s != "" {
		return Choice{Snapshotter: s, Reason: "set by MOATC_SNAPSHOTTER"}
	}
	chosen.Lock()
	defer chosen.Unlock()
	if !chosen.rootless || chosen.home == "" {
		return Choice{Snapshotter: "overlayfs", Reason: "the default as root"}
	}
	if chosen.choice == nil {
		c := choose(chosen.home)
		chosen.choice = &c
	}
	return *chosen.choice
}

// choose reads the cached probe for this kernel, or probes and caches the result.
func choose(home string) Choice {
	kernel := kernelID()
	cache := filepath.Join(home, CacheFile)
	var c Choice
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &c) == nil && c.Kernel == kernel && c.Snapshotter != "" {
		return c
	}
	c = Choice{Snapshotter: "overlayfs", Reason: "probed: overlayfs mounts in a user namespace here", Kernel: kernel}
	if err := ProbeOverlay(home); err != nil {
		c.Snapshotter = "native"
		c.Reason = fmt.Sprintf("probed: overlayfs cannot be mounted in a user namespace here (%v); native copies each layer instead (slower, more disk). Delete %s to probe again", err, cache)
	}
	if b, err := json.Marshal(c); err == nil {
		// Best effort: without the cache the next command probes again.
		atomicfile.Write(cache, append(b, '\n'), 0o644)
	}
	return c
}

// kernelID names the running kernel (release and build), to invalidate a cached probe.
func kernelID() string {
	var id []string
	for _, f := range []string{"/proc/sys/kernel/osrelease", "/proc/sys/kernel/version"} {
		b, _ := os.ReadFile(f)
		id = append(id, strings.TrimSpace(string(b)))
	}
	return strings.Join(id, " ")
}

// ProbeOverlay mounts an overlay in a new user and mount namespace, as containerd's overlayfs
// snapshotter would in rootless moatc's (with userxattr when the kernel has it), in a
// temporary directory under dir (the filesystem the snapshots live on), writes a file through
// it, and checks the file reached the upper layer. The namespaces end with the probe, so
// nothing stays mounted.
func ProbeOverlay(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("probing overlayfs: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, ".overlay-probe-")
	if err != nil {
		return fmt.Errorf("probing overlayfs: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o755); err != nil {
			return fmt.Errorf("probing overlayfs: %w", err)
		}
	}
	opts := "lowerdir=lower,upperdir=upper,workdir=work"
	// Run in tmp with relative paths: option strings must not hold the home's commas or colons.
	script := `mount -t overlay overlay -o "$1,userxattr" merged 2>/dev/null || mount -t overlay overlay -o "$1" merged || exit 1
echo probe > merged/probe`
	cmd := exec.Command("unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", opts)
	cmd.Dir = tmp
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("mounting an overlay in a user namespace: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if b, err := os.ReadFile(filepath.Join(tmp, "upper", "probe")); err != nil || string(b) != "probe\n" {
		return fmt.Errorf("a file written through the overlay is not in its upper layer (%v)", err)
	}
	return nil
}
