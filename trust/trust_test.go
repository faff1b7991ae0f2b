package trust

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/moatc/moatc/config"
)

func parse(t *testing.T, path, text string) *config.File {
	t.Helper()
	f, err := config.Parse(path, []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestTrustIsForExactContent(t *testing.T) {
	s := Open(t.TempDir())
	ws := t.TempDir()
	path := filepath.Join(ws, "moatc.yaml")
	f := parse(t, path, "sandbox: none\nmounts: [/etc:/hostetc]\n")
	var ue *UntrustedError
	err := s.Check(f)
	if !errors.As(err, &ue) || ue.Changed {
		t.Fatalf("untrusted file: %v", err)
	}
	for _, want := range []string{path + ":1: sandbox: none", path + ":2: mounts: [/etc:/hostetc]", "moatc trust " + path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q:\n%v", want, err)
		}
	}
	if _, err := s.Trust(f); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(f); err != nil {
		t.Fatalf("trusted file: %v", err)
	}
	// One byte more, and it is refused again.
	g := parse(t, path, "sandbox: none\nmounts: [/etc:/hostetc]\n ")
	if err := s.Check(g); !errors.As(err, &ue) || !ue.Changed || !strings.Contains(err.Error(), "changed since you trusted it") {
		t.Fatalf("changed file: %v", err)
	}
	// The same content elsewhere is another file.
	if err := s.Check(parse(t, filepath.Join(t.TempDir(), "moatc.yaml"), "sandbox: none\nmounts: [/etc:/hostetc]\n")); !errors.As(err, &ue) {
		t.Fatalf("same bytes at another path: %v", err)
	}
	// A file without policy keys needs nothing.
	if err := s.Check(parse(t, path, "name: x\n")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store mode: %v %v", fi.Mode(), err)
	}
	if found, err := s.Untrust(path); !found || err != nil {
		t.Fatalf("untrust: %v %v", found, err)
	}
	if err := s.Check(f); !errors.As(err, &ue) {
		t.Fatalf("after untrust: %v", err)
	}
}

func TestCorruptStoreTrustsNothing(t *testing.T) {
	f := parse(t, "/ws/moatc.yaml", "sandbox: none\n")
	good := fmt.Sprintf(`{"version":1,"files":{"/ws/moatc.yaml":{"path":"/ws/moatc.yaml","sha256":"%s","trusted":"2026-01-01T00:00:00Z","keys":["sandbox"]}}}`, f.Sum)
	for name, c := range map[string]struct {
		text string
		mode os.FileMode
	}{
		"garbage":            {"{not json", 0o600},
		"truncated":          {good[:len(good)-10], 0o600},
		"other version":      {strings.Replace(good, `"version":1`, `"version":7`, 1), 0o600},
		"unknown field":      {strings.Replace(good, `"version":1`, `"version":1,"trust_all":true`, 1), 0o600},
		"path mismatch":      {strings.Replace(good, `"path":"/ws/moatc.yaml"`, `"path":"/other"`, 1), 0o600},
		"bad sum":            {strings.Replace(good, f.Sum, "zz", 1), 0o600},
		"writable by others": {good, 0o666},
	} {
		t.Run(name, func(t *testing.T) {
			home := t.TempDir()
			s := Open(home)
			if err := os.WriteFile(s.Path(), []byte(c.text), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(s.Path(), c.mode)
			var ce *CorruptError
			if err := s.Check(f); !errors.As(err, &ce) || !strings.Contains(err.Error(), "rm "+s.Path()) {
				t.Fatalf("Check: %v", err)
			}
			if _, err := s.Trust(f); !errors.As(err, &ce) {
				t.Fatalf("Trust over a corrupt store: %v", err)
			}
		})
	}
	// The well-formed store does trust the file (so the cases above fail for their defect).
	s := Open(t.TempDir())
	os.WriteFile(s.Path(), []byte(good), 0o600)
	if err := s.Check(f); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentTrustKeepsEveryEntry(t *testing.T) {
	s := Open(t.TempDir())
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Go(func() {
			if _, err := s.Trust(parse(t, fmt.Sprintf("/ws%d/moatc.yaml", i), "sandbox: none\n")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	l, err := s.List()
	if err != nil || len(l) != 20 {
		t.Fatalf("%d entries, %v", len(l), err)
	}
}
