package ctrd

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadUserFile(t *testing.T) {
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "etc"), 0o755)
	if b, err := readUserFile(root, "etc/passwd"); err != nil || b != nil {
		t.Errorf("a missing file: %q, %v; want nothing", b, err)
	}
	os.WriteFile(filepath.Join(root, "etc", "group"), []byte("g:x:5:\n"), 0o644)
	if b, err := readUserFile(root, "etc/group"); err != nil || string(b) != "g:x:5:\n" {
		t.Errorf("a regular file: %q, %v", b, err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "etc", "passwd"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readUserFile(root, "etc/passwd"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a FIFO: %v; want refused (and no block)", err)
	}
	os.Remove(filepath.Join(root, "etc", "passwd"))
	outside := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(outside, []byte("host:x:0:0::/:/bin/sh\n"), 0o644)
	os.Symlink(outside, filepath.Join(root, "etc", "passwd"))
	if b, err := readUserFile(root, "etc/passwd"); err == nil {
		t.Errorf("a link out of the root: read %q; want refused", b)
	}
	os.Remove(filepath.Join(root, "etc", "passwd"))
	os.WriteFile(filepath.Join(root, "etc", "passwd"), make([]byte, userFileMax+1), 0o644)
	if _, err := readUserFile(root, "etc/passwd"); err == nil {
		t.Error("a file over the limit: read; want refused")
	}
}
