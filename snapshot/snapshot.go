// Package snapshot chooses the snapshotter runs use and turns a root filesystem directory into
// an OCI image, so images can be made where no registry is reachable.
package snapshot

import (
	"os"
)

// Default is the snapshotter for runs: overlayfs, unless MOATC_SNAPSHOTTER names another
// (native works on filesystems where overlayfs does not).
func Default() string {
	if s := os.Getenv("MOATC_SNAPSHOTTER"); s != "" {
		return s
	}
	return "overlayfs"
}
