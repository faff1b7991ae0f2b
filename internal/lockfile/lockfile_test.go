package lockfile

import (
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestFlock(t *testing.T) {
	p := filepath.Join(t.TempDir(), "lock")
	unlock, err := Flock(p, unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Flock(p, unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
		t.Errorf("a second exclusive lock: %v, want EWOULDBLOCK", err)
	}
	unlock()
	again, err := Flock(p, unix.LOCK_SH|unix.LOCK_NB)
	if err != nil {
		t.Errorf("after release: %v", err)
	}
	again()
}
