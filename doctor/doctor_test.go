package doctor

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/moatc/moatc/ctrd"
)

// TestNonRootDoesNotStartContainerd: for a user who is not root, doctor reports the managed
// (rootless) containerd as not running instead of starting it the rootful way.
func TestNonRootDoesNotStartContainerd(t *testing.T) {
	dir := t.TempDir()
	d := &ctrd.Daemon{Dir: dir, Prefix: dir}
	cl, c := containerdCheck(context.Background(), Options{Prefix: dir, Conn: ctrd.Options{Daemon: d}}, true)
	if cl != nil || c.OK || !c.Optional || !strings.Contains(c.Detail, "moatc system start") {
		t.Errorf("got client %v, check %+v; want no client and an optional line naming `moatc system start`", cl, c)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("doctor touched the daemon's dir: %v", ents)
	}
	// As root the same options start it, which fails here on the empty prefix.
	if _, c := containerdCheck(context.Background(), Options{Prefix: dir, Conn: ctrd.Options{Daemon: d}}, false); c.OK || c.Optional || !strings.Contains(c.Detail, "not installed") {
		t.Errorf("rootful: got %+v, want a required failure saying containerd is not installed", c)
	}
}

func TestRootlessLinesArePrefixed(t *testing.T) {
	cs := Rootless(t.TempDir())
	if len(cs) < 10 {
		t.Fatalf("got %d rootless checks, want every one of package rootless's", len(cs))
	}
	for _, c := range cs {
		if !strings.HasPrefix(c.Name, "rootless: ") || c.Optional || (!c.OK && c.Fix == "") {
			t.Errorf("%+v: want a `rootless: ` name, required, and a fix when it fails", c)
		}
	}
}
