package engine

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestCopyTree(t *testing.T) {
	img := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(secret, []byte("host"), 0o600)
	os.MkdirAll(filepath.Join(img, "data", "sub"), 0o750)
	os.WriteFile(filepath.Join(img, "data", "sub", "f"), []byte("image"), 0o640)
	os.Symlink(secret, filepath.Join(img, "data", "out"))
	syscall.Mkfifo(filepath.Join(img, "data", "fifo"), 0o644)
	os.Chmod(filepath.Join(img, "data"), 0o777|os.ModeSticky)
	r, err := os.OpenRoot(img)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dst := t.TempDir()
	if err := copyTree(r, "data", dst); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "sub", "f")); string(b) != "image" {
		t.Errorf("sub/f: %q", b)
	}
	if fi, _ := os.Stat(filepath.Join(dst, "sub", "f")); fi == nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("sub/f's mode: %v", fi)
	}
	if fi, _ := os.Stat(dst); fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("the mount point's mode is not kept: %v", fi.Mode())
	}
	if l, err := os.Readlink(filepath.Join(dst, "out")); err != nil || l != secret {
		t.Errorf("a link is copied as a link: %q %v", l, err)
	}
	if _, err := os.Lstat(filepath.Join(dst, "fifo")); err == nil {
		t.Error("a fifo was copied")
	}
	if !dirEmpty(t.TempDir()) || dirEmpty(dst) {
		t.Error("dirEmpty")
	}
	clearDir(dst)
	if !dirEmpty(dst) {
		t.Error("clearDir left entries")
	}
}
