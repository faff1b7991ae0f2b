package mounts

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestOpenStaysInTheWorkspace(t *testing.T) {
	ws := t.TempDir()
	outside := t.TempDir()
	os.Mkdir(filepath.Join(ws, "real"), 0o755)
	os.Symlink("real", filepath.Join(ws, "inside"))
	os.Symlink(outside, filepath.Join(ws, "abs-out"))
	os.Symlink("../"+filepath.Base(outside), filepath.Join(ws, "rel-out"))
	os.MkdirAll(filepath.Join(ws, "a", "b"), 0o755)
	os.Symlink("../../..", filepath.Join(ws, "a", "b", "up"))

	for src, want := range map[string]string{"real": filepath.Join(ws, "real"), "inside": filepath.Join(ws, "real"), "./real/": filepath.Join(ws, "real")} {
		f, err := Open(ws, src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got, _ := RealPath(f); got != want {
			t.Errorf("%s resolved to %s, want %s", src, got, want)
		}
		f.Close()
	}
	for _, src := range []string{"abs-out", "rel-out", "a/b/up", "a/b/up/etc"} {
		_, err := Open(ws, src)
		var esc *EscapeError
		if !errors.As(err, &esc) {
			t.Errorf("%s: %v, want an EscapeError", src, err)
		}
	}
	// `..` and absolute sources come only from flags or a trusted file: resolved as written.
	f, err := Open(ws, "../"+filepath.Base(outside))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := RealPath(f); got != outside {
		t.Errorf("../ resolved to %s", got)
	}
	f.Close()
}

// A pin is the directory opened, whatever later happens to its path.
func TestPinHoldsTheDirectoryOpened(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("pinning needs root")
		}
		t.Skip("pinning needs root (not CI, so skipping)")
	}
	ws, secret, pins := t.TempDir(), t.TempDir(), filepath.Join(t.TempDir(), "pins")
	os.Mkdir(filepath.Join(ws, "data"), 0o755)
	os.WriteFile(filepath.Join(ws, "data", "mine"), []byte("data"), 0o644)
	os.WriteFile(filepath.Join(secret, "shadow"), []byte("secret"), 0o600)
	f, err := Open(ws, "data")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The workload swaps data/ for a link to the secret directory after it was opened.
	os.Rename(filepath.Join(ws, "data"), filepath.Join(ws, "moved"))
	os.Symlink(secret, filepath.Join(ws, "data"))
	p, err := Pin(f, pins, "0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "mine")); err != nil {
		t.Errorf("the pin does not show the directory opened: %v", err)
	}
	if _, err := os.Stat(filepath.Join(p, "shadow")); err == nil {
		t.Error("the pin followed the swapped path")
	}
	if err := Unpin(pins); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) || len(under(pins)) > 0 {
		t.Errorf("Unpin left %s: %v %v", pins, err, under(pins))
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "moved", "mine")); string(b) != "data" {
		t.Error("Unpin touched the pinned directory's content")
	}
}
