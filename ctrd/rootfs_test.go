package ctrd

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An image is not trusted: its CA bundle path may be a link out of the rootfs, a ../ path, a
// FIFO or a huge file. None of them reads a host file, blocks or exhausts memory.
func TestReadInRootStaysInTheImage(t *testing.T) {
	host := t.TempDir()
	secret := filepath.Join(host, "host-secret")
	os.WriteFile(secret, []byte("HOST SECRET"), 0o600)
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/ssl/certs"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc/pki/tls/certs"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc/ssl2"), 0o755)
	// An absolute link to the host's file, and a ../ link climbing out.
	os.Symlink(secret, filepath.Join(root, "etc/ssl/certs/ca-certificates.crt"))
	rel, _ := filepath.Rel(filepath.Join(root, "etc/pki/tls/certs"), secret)
	os.Symlink(rel, filepath.Join(root, "etc/pki/tls/certs/ca-bundle.crt"))
	syscall.Mkfifo(filepath.Join(root, "etc/ssl2/fifo.pem"), 0o644)
	paths := []string{"/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl2/fifo.pem", "/../" + rel}
	found, data, err := readInRoot(root, paths, 1<<20)
	if err != nil || found != "" || strings.Contains(string(data), "HOST SECRET") {
		t.Fatalf("read %q from %q (%v): the image reached outside its rootfs", data, found, err)
	}
	// Inside the image, the same absolute link names the image's own file.
	os.MkdirAll(filepath.Join(root, filepath.Dir(secret)), 0o755)
	os.WriteFile(filepath.Join(root, secret), []byte("image's own"), 0o644)
	found, data, err = readInRoot(root, paths, 1<<20)
	if err != nil || found != paths[0] || string(data) != "image's own" {
		t.Errorf("the link inside the image: %q %q %v", found, data, err)
	}
	// A bundle over the cap is an error, not a read of it all.
	os.WriteFile(filepath.Join(root, secret), make([]byte, 2<<20), 0o644)
	if _, _, err := readInRoot(root, paths, 1<<20); err == nil {
		t.Error("an oversized bundle was read")
	}
}
