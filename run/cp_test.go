package run

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func tarOf(t *testing.T, entries ...entry) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: mode, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return &b
}

func TestExtractTarCopies(t *testing.T) {
	dst := t.TempDir()
	a := tarOf(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "d/f", typ: tar.TypeReg, body: "hello", mode: 0o4755},
		entry{name: "d/l", typ: tar.TypeSymlink, link: "/etc/shadow"},
		entry{name: "d/h", typ: tar.TypeLink, link: "d/f"},
	)
	if err := extractTar(a, dst, "d", "out"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dst, "out/f"))
	if err != nil || string(b) != "hello" {
		t.Fatalf("out/f: %q %v", b, err)
	}
	fi, _ := os.Stat(filepath.Join(dst, "out/f"))
	if fi.Mode() != 0o755 { // set-uid dropped, the rest kept
		t.Errorf("mode of out/f: %v", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Join(dst, "out")); fi.Mode().Perm() != 0o750 {
		t.Errorf("mode of out: %v", fi.Mode())
	}
	if l, err := os.Readlink(filepath.Join(dst, "out/l")); err != nil || l != "/etc/shadow" {
		t.Errorf("out/l: %q %v", l, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "out/h")); string(b) != "hello" {
		t.Errorf("hard link: %q", b)
	}
}

// TestExtractTarRefusesEscapes: hostile archives never write outside the destination.
func TestExtractTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	os.WriteFile(victim, []byte("safe"), 0o644)
	cases := map[string][]entry{
		"dotdot":     {{name: "x/../../victim", typ: tar.TypeReg, body: "pwned"}},
		"dotdot-top": {{name: "../victim", typ: tar.TypeReg, body: "pwned"}},
		"absolute":   {{name: victim, typ: tar.TypeReg, body: "pwned"}},
		"symlink-then-file": {
			{name: "x", typ: tar.TypeDir},
			{name: "x/l", typ: tar.TypeSymlink, link: outside},
			{name: "x/l/victim", typ: tar.TypeReg, body: "pwned"},
		},
		"symlink-then-overwrite": {
			{name: "x", typ: tar.TypeDir},
			{name: "x/l", typ: tar.TypeSymlink, link: "../../" + filepath.Base(outside) + "/victim"},
			{name: "x/l", typ: tar.TypeReg, body: "pwned"},
			{name: "x/m", typ: tar.TypeSymlink, link: victim},
			{name: "x/h", typ: tar.TypeLink, link: "x/m"},
		},
		"hardlink-out":    {{name: "x", typ: tar.TypeDir}, {name: "x/h", typ: tar.TypeLink, link: "/etc/passwd"}},
		"hardlink-dotdot": {{name: "x", typ: tar.TypeDir}, {name: "x/h", typ: tar.TypeLink, link: "x/../../victim"}},
		"device":          {{name: "x", typ: tar.TypeDir}, {name: "x/null", typ: tar.TypeChar}},
		"fifo":            {{name: "x", typ: tar.TypeDir}, {name: "x/p", typ: tar.TypeFifo}},
		"other-top":       {{name: "y", typ: tar.TypeReg, body: "pwned"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			parent := t.TempDir()
			dst := filepath.Join(parent, "dst")
			os.Mkdir(dst, 0o755)
			err := extractTar(tarOf(t, entries...), dst, "x", "")
			if b, _ := os.ReadFile(victim); string(b) != "safe" {
				t.Fatalf("the victim outside was written: %q", b)
			}
			if b, err := os.ReadFile("/etc/passwd"); err != nil || strings.Contains(string(b), "pwned") {
				t.Fatal("/etc/passwd touched")
			}
			// Whatever was made is inside dst, and nothing in it is the outside file.
			filepath.Walk(parent, func(p string, fi os.FileInfo, err error) error {
				if err == nil && fi.Mode().IsRegular() {
					if b, _ := os.ReadFile(p); string(b) == "safe" {
						t.Errorf("%s reads the outside file", p)
					}
					if st, ok := sysIno(fi); ok {
						if vi, _ := os.Stat(victim); vi != nil {
							if vs, _ := sysIno(vi); vs == st {
								t.Errorf("%s is a hard link to the outside file", p)
							}
						}
					}
				}
				return nil
			})
			if name != "symlink-then-overwrite" && err == nil {
				t.Errorf("no error")
			}
		})
	}
}

func TestEntryName(t *testing.T) {
	for _, c := range []struct{ name, top, as, want string }{
		{"passwd", "passwd", "out", "out"},
		{"etc/", "etc", "", "etc"},
		{"etc/a/b", "etc", "x", "x/a/b"},
		{"./a", ".", "", "a"},
		{"./", ".", "", "."},
	} {
		got, err := entryName(c.name, c.top, c.as)
		if err != nil || got != c.want {
			t.Errorf("entryName(%q, %q, %q) = %q, %v; want %q", c.name, c.top, c.as, got, err, c.want)
		}
	}
	for _, bad := range []string{"/etc/passwd", "../x", "etc/../../x", "", "other"} {
		if got, err := entryName(bad, "etc", ""); err == nil {
			t.Errorf("entryName(%q) = %q, no error", bad, got)
		}
	}
}

func sysIno(fi os.FileInfo) (uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, false
	}
	return st.Ino, true
}

func TestNotFound(t *testing.T) {
	gv := errors.New(`OCI runtime exec failed: executing command "tar -C /tmp -xf -" in sandbox: error finding executable "tar" in PATH [/bin]: no such file or directory`)
	for _, c := range []struct {
		code int
		err  error
		want bool
	}{
		{127, nil, true},
		{0, &ExitError{Code: 127, Err: errors.New("not found")}, true},
		{0, gv, true},
		{2, nil, false},
		{0, errors.New("containerd is not answering"), false},
	} {
		if got := notFound(c.code, c.err); got != c.want {
			t.Errorf("notFound(%d, %v) = %v", c.code, c.err, got)
		}
	}
}

func TestPrintable(t *testing.T) {
	if got := printable("tar: x: Cannot stat\n\x1b]0;pwned\x07\x1b[2J"); got != "tar: x: Cannot stat; ]0;pwned[2J" {
		t.Errorf("printable: %q", got)
	}
}

func TestWriteTarRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "d/e"), 0o755)
	os.WriteFile(filepath.Join(src, "d/e/f"), []byte("x"), 0o600)
	os.Symlink("/etc/passwd", filepath.Join(src, "d/l"))
	var b bytes.Buffer
	if err := writeTar(&b, filepath.Join(src, "d"), "renamed"); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := extractTar(&b, dst, "renamed", ""); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dst, "renamed/e/f")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("renamed/e/f: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "renamed/l")); err != nil || l != "/etc/passwd" {
		t.Errorf("the symlink was followed: %q %v", l, err)
	}
}

func TestContainerPath(t *testing.T) {
	for in, want := range map[string][2]string{
		"/etc/passwd": {"/etc", "passwd"}, "/../../etc/passwd": {"/etc", "passwd"}, "/": {"/", "."},
		"/data/.": {"/data", "."}, "rel/x": {"rel", "x"}, "x": {".", "x"}, "/data/": {"/", "data"},
	} {
		if d, b := containerPath(in); d != want[0] || b != want[1] {
			t.Errorf("containerPath(%q) = %q, %q; want %q", in, d, b, want)
		}
	}
}
