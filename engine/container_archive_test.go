package engine

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
	"golang.org/x/sys/unix"
)

func TestStatHeaderValue(t *testing.T) {
	mt := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	v, err := statHeaderValue(container.PathStat{Name: "d", Size: 4096, Mode: os.ModeDir | 0o755, Mtime: mt, LinkTarget: ""})
	if err != nil {
		t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	// The keys and the mode's encoding are what the Docker CLI decodes.
	if m["name"] != "d" || m["size"] != float64(4096) || m["mode"] != float64(os.ModeDir|0o755) || m["mtime"] != "2024-05-06T07:08:09Z" || m["linkTarget"] != "" {
		t.Errorf("stat header: %s", b)
	}
}

func TestSplitArchivePath(t *testing.T) {
	for _, c := range []struct{ in, dir, base string }{
		{"/etc/passwd", "/etc", "passwd"},
		{"/tmp/", "/", "tmp"},
		{"/tmp/d/.", "/tmp/d", "."},
		{"/", "/", "."},
		{"/a/../b", "/", "b"},
	} {
		if d, b := splitArchivePath(c.in); d != c.dir || b != c.base {
			t.Errorf("splitArchivePath(%q) = %q %q, want %q %q", c.in, d, b, c.dir, c.base)
		}
	}
}

// openInRoot must resolve links and .. inside the root: a container's absolute link names the
// container's file, never the host's.
func TestOpenInRoot(t *testing.T) {
	root := t.TempDir()
	host := t.TempDir()
	os.MkdirAll(filepath.Join(root, "inside", "x"), 0o755)
	os.Symlink(host, filepath.Join(root, "abs"))
	os.Symlink("../../../../..", filepath.Join(root, "up"))
	os.MkdirAll(filepath.Join(root, host), 0o755) // the link's target, inside the root
	for _, p := range []string{"/abs", "/up" + host, "/../../" + host, "/inside/../abs"} {
		fd, err := openInRoot(root, p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		var st, want unix.Stat_t
		unix.Fstat(fd, &st)
		unix.Stat(filepath.Join(root, host), &want)
		unix.Close(fd)
		if st.Ino != want.Ino || st.Dev != want.Dev {
			t.Errorf("%s resolved outside the root", p)
		}
	}
	if fd, err := openInRoot(root, "/"); err != nil {
		t.Errorf("/: %v", err)
	} else {
		unix.Close(fd)
	}
	if _, err := openInRoot(root, "/nope/x"); err == nil {
		t.Error("a missing path opened")
	}
}
