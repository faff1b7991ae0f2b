package wsync

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// snapshot describes every entry under dir (not dir itself): type, mode, owner, content or
// target, and mtime; skip names are left out.
func snapshot(t *testing.T, dir string, skip ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		for _, s := range skip {
			if rel == s || strings.HasPrefix(rel, s+"/") {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%v uid=%d gid=%d mtime=%d", fi.Mode(), st.Uid, st.Gid, fi.ModTime().UnixNano())
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += " content=" + string(b)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " target=" + target
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameSnap(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: %s missing (want %s)", what, k, w)
		} else if g != w {
			t.Errorf("%s: %s:\n got  %s\n want %s", what, k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: unexpected %s (%s)", what, k, g)
		}
	}
}

func write(t *testing.T, p, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// setTimes gives every entry under dir a fixed, distinct past mtime (with nanoseconds),
// deepest first, so equality checks compare real values rather than "now".
func setTimes(t *testing.T, dir string) {
	t.Helper()
	var paths []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			paths = append(paths, p)
		}
		return nil
	})
	for i := len(paths) - 1; i >= 0; i-- {
		ts := unix.NsecToTimespec(time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano() + int64(i)*1_000_000_007)
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

// tarB builds a stream by hand, as a hostile pod could.
type tarB struct {
	buf bytes.Buffer
	tw  *tar.Writer
	n   int
}

func newTar() *tarB {
	b := &tarB{}
	b.tw = tar.NewWriter(&b.buf)
	return b
}

func (b *tarB) add(h *tar.Header, content string) *tarB {
	if h.ModTime.IsZero() {
		h.ModTime = time.Unix(1_600_000_000, 0)
	}
	if h.Mode == 0 {
		h.Mode = 0o644
		if h.Typeflag == tar.TypeDir {
			h.Mode = 0o755
		}
	}
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(content))
	}
	h.Format = tar.FormatPAX
	if err := b.tw.WriteHeader(h); err != nil {
		panic(err)
	}
	if _, err := io.WriteString(b.tw, content); err != nil {
		panic(err)
	}
	b.n++
	return b
}

func (b *tarB) file(name, content string) *tarB {
	return b.add(&tar.Header{Typeflag: tar.TypeReg, Name: name}, content)
}

func (b *tarB) dir(name string) *tarB {
	return b.add(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/"}, "")
}

func (b *tarB) symlink(name, target string) *tarB {
	return b.add(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target}, "")
}

// done ends the stream properly.
func (b *tarB) done() []byte {
	end := &tar.Header{Typeflag: tar.TypeXGlobalHeader, Name: endName,
		PAXRecords: map[string]string{endRecord: fmt.Sprint(b.n)}, Format: tar.FormatPAX}
	if err := b.tw.WriteHeader(end); err != nil {
		panic(err)
	}
	if err := b.tw.Close(); err != nil {
		panic(err)
	}
	return b.buf.Bytes()
}

func send(t *testing.T, root string) ([]byte, Manifest) {
	t.Helper()
	var buf bytes.Buffer
	m, err := Send(context.Background(), &buf, root)
	if err != nil {
		t.Fatal(err)
	}
	// The manifest lives on disk between send and receive: go through JSON as moatc does.
	j, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back Manifest
	if err := json.Unmarshal(j, &back); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), back
}

func receive(t *testing.T, stream []byte, root string, sent Manifest, opt ReceiveOptions) (Result, error) {
	t.Helper()
	if opt.Staging == "" {
		opt.Staging = t.TempDir()
	}
	res, err := Receive(context.Background(), bytes.NewReader(stream), root, sent, opt)
	if left, _ := os.ReadDir(opt.Staging); len(left) != 0 {
		t.Errorf("staging not cleaned up: %v", left)
	}
	return res, err
}

func TestRoundTrip(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback=%v", fallback), func(t *testing.T) {
			noOpenat2.Store(fallback)
			defer noOpenat2.Store(false)
			roundTrip(t)
		})
	}
}

func roundTrip(t *testing.T) {
	base := t.TempDir()
	src, pod := filepath.Join(base, "ws"), filepath.Join(base, "pod")
	write(t, filepath.Join(src, "a.txt"), "alpha", 0o644)
	write(t, filepath.Join(src, "run.sh"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(src, "gone.txt"), "bye", 0o600)
	write(t, filepath.Join(src, "todir"), "a file for now", 0o644)
	write(t, filepath.Join(src, "dir/b.txt"), "beta", 0o644)
	write(t, filepath.Join(src, "dir/sub/c.txt"), "gamma", 0o640)
	write(t, filepath.Join(src, "olddir/x"), "x", 0o644)
	os.Mkdir(filepath.Join(src, "empty"), 0o750)
	os.Symlink("a.txt", filepath.Join(src, "link"))
	os.Symlink("/etc/passwd", filepath.Join(src, "abs-link")) // data, not followed
	if err := unix.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	setTimes(t, src)
	original := snapshot(t, src, "fifo")

	stream, sent := send(t, src)
	if _, ok := sent.Entries["fifo"]; ok {
		t.Error("fifo sent")
	}
	if got := sent.Entries["dir/sub/c.txt"]; got.Type != TypeFile || got.Size != 5 || got.Mode != 0o640 {
		t.Errorf("manifest entry: %+v", got)
	}
	if err := Unpack(bytes.NewReader(stream), pod); err != nil {
		t.Fatal(err)
	}
	sameSnap(t, "unpacked", snapshot(t, pod), original)

	// The workload changes things in the pod.
	write(t, filepath.Join(pod, "a.txt"), "alpha, changed", 0o644)
	write(t, filepath.Join(pod, "new.txt"), "new", 0o644)
	write(t, filepath.Join(pod, "dir/new/d.txt"), "delta", 0o644)
	os.Remove(filepath.Join(pod, "gone.txt"))
	os.Remove(filepath.Join(pod, "todir"))
	write(t, filepath.Join(pod, "todir/inside"), "now a dir", 0o644)
	os.RemoveAll(filepath.Join(pod, "olddir"))
	os.Symlink("/outside", filepath.Join(pod, "olddir")) // a dir became a symlink
	os.Remove(filepath.Join(pod, "link"))
	os.Symlink("dir/b.txt", filepath.Join(pod, "link"))
	os.Chmod(filepath.Join(pod, "run.sh"), 0o700)
	os.Chmod(filepath.Join(pod, "empty"), 0o500)
	modified := snapshot(t, pod)

	// Meanwhile on the host: a file made after Send is not the pod's to delete.
	write(t, filepath.Join(src, "host-only.txt"), "mine", 0o644)

	var back bytes.Buffer
	if err := Pack(&back, pod); err != nil {
		t.Fatal(err)
	}
	res, err := receive(t, back.Bytes(), src, sent, ReceiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Skipped) != 0 {
		t.Errorf("skipped: %+v", res.Skipped)
	}
	sameSnap(t, "received", snapshot(t, src, "host-only.txt", "fifo"), modified)
	if b, err := os.ReadFile(filepath.Join(src, "host-only.txt")); err != nil || string(b) != "mine" {
		t.Errorf("host-only file: %q, %v", b, err)
	}
	if fi, err := os.Lstat(filepath.Join(src, "fifo")); err != nil || fi.Mode()&fs.ModeNamedPipe == 0 {
		t.Errorf("host fifo: %v, %v", fi, err)
	}
	// gone.txt, olddir/x and (replaced) olddir are deletions; c.txt, b.txt, abs-link unchanged.
	if res.Deleted != 2 || res.Unchanged < 3 || res.Written < 6 {
		t.Errorf("result: %+v", res)
	}

	// Receiving the same again changes nothing.
	os.Remove(filepath.Join(src, "host-only.txt"))
	_, sent2 := send(t, src)
	var again bytes.Buffer
	if err := Pack(&again, pod); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, src)
	res, err = receive(t, again.Bytes(), src, sent2, ReceiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Written != 0 || res.Deleted != 0 || res.Unchanged != len(sent2.Entries) {
		t.Errorf("second receive: %+v (sent %d)", res, len(sent2.Entries))
	}
	sameSnap(t, "second receive", snapshot(t, src), before)
}

// hostile sets up a workspace, sends it, and returns what Receive needs plus an outside
// directory an escape would reach.
type hostile struct {
	base, root, outside string
	sent                Manifest
}

func newHostile(t *testing.T) *hostile {
	h := &hostile{base: t.TempDir()}
	h.root = filepath.Join(h.base, "ws")
	h.outside = filepath.Join(h.base, "outside")
	write(t, filepath.Join(h.outside, "keep"), "outside", 0o644)
	write(t, filepath.Join(h.root, "a.txt"), "alpha", 0o644)
	write(t, filepath.Join(h.root, "sub/b.txt"), "beta", 0o644)
	setTimes(t, h.base)
	_, h.sent = send(t, h.root)
	return h
}

// check receives stream and requires: an error (wantErr) with the root untouched, or
// success with at least one skip (wantSkip); in every case base outside the root is
// untouched.
func (h *hostile) check(t *testing.T, stream []byte, wantErr, wantSkip bool) Result {
	t.Helper()
	outside := snapshot(t, h.base, "ws")
	inside := snapshot(t, h.root)
	res, err := receive(t, stream, h.root, h.sent, ReceiveOptions{})
	sameSnap(t, "outside", snapshot(t, h.base, "ws"), outside)
	if wantErr {
		if err == nil {
			t.Fatalf("no error; result %+v", res)
		}
		t.Logf("error (wanted): %v", err)
		sameSnap(t, "root after error", snapshot(t, h.root), inside)
		return res
	}
	if err != nil {
		t.Fatal(err)
	}
	if wantSkip && len(res.Skipped) == 0 {
		t.Errorf("nothing skipped: %+v", res)
	}
	t.Logf("result: %+v", res)
	return res
}

func TestRejectNames(t *testing.T) {
	absEtc := "/etc/wsync-test-" + fmt.Sprint(time.Now().UnixNano())
	for _, name := range []string{"../x", "../outside/keep", "a/../../x", "sub/../../x", absEtc, "ABS", "./a.txt", "sub//b.txt", "sub/./b.txt"} {
		t.Run(name, func(t *testing.T) {
			h := newHostile(t)
			if name == "ABS" {
				name = filepath.Join(h.outside, "x")
			}
			// The bad entry comes after a good one and the deletion of sub: none may happen.
			stream := newTar().file("a.txt", "changed").file(name, "pwned").done()
			h.check(t, stream, true, false)
			if _, err := os.Lstat(absEtc); err == nil {
				os.Remove(absEtc)
				t.Fatal("wrote into /etc")
			}
			if _, err := os.Lstat(filepath.Join(h.base, "x")); err == nil {
				t.Fatal("wrote beside the workspace")
			}
		})
	}
}

func TestSymlinkEntryThenFileThroughIt(t *testing.T) {
	h := newHostile(t)
	stream := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta").
		symlink("link", h.outside).file("link/pwned", "pwned").done()
	h.check(t, stream, true, false)

	// The same with the link declared as a directory first, then again as a symlink.
	stream = newTar().dir("link").symlink("link", h.outside).file("link/pwned", "pwned").done()
	h.check(t, stream, true, false)
}

func TestSymlinkEntryAlone(t *testing.T) {
	// A symlink to outside is fine as a symlink: it is data, never followed by Receive.
	h := newHostile(t)
	stream := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta").symlink("link", h.outside).done()
	h.check(t, stream, false, false)
	if target, err := os.Readlink(filepath.Join(h.root, "link")); err != nil || target != h.outside {
		t.Fatalf("link: %q, %v", target, err)
	}
}

func TestHostSymlinkInTheWay(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("fallback=%v", fallback), func(t *testing.T) {
			noOpenat2.Store(fallback)
			defer noOpenat2.Store(false)

			// sub was a directory when sent; on the host it is now a symlink to outside.
			h := newHostile(t)
			subSent := h.sent.Entries["sub"]
			os.RemoveAll(filepath.Join(h.root, "sub"))
			if err := os.Symlink(h.outside, filepath.Join(h.root, "sub")); err != nil {
				t.Fatal(err)
			}
			unchangedSub := &tar.Header{Typeflag: tar.TypeDir, Name: "sub/", Mode: int64(subSent.Mode), ModTime: subSent.MTime}
			// sub unchanged in the pod, a file written in it: the file must not land outside.
			stream := newTar().file("a.txt", "alpha").add(unchangedSub, "").file("sub/b.txt", "pwned").file("sub/file", "pwned").done()
			h.check(t, stream, false, true)
			// sub changed in the pod too: the host's symlink is not the pod's to replace.
			stream = newTar().file("a.txt", "alpha").dir("sub").file("sub/file", "pwned").done()
			h.check(t, stream, false, true)
			// No directory entry for sub at all: refused outright.
			stream = newTar().file("a.txt", "alpha").file("sub/file", "pwned").done()
			h.check(t, stream, true, false)
		})
	}
}

func TestSentSymlinkBecomesDir(t *testing.T) {
	// The workspace itself holds sub -> outside; the pod made sub a real directory.
	h := &hostile{base: t.TempDir()}
	h.root = filepath.Join(h.base, "ws")
	h.outside = filepath.Join(h.base, "outside")
	write(t, filepath.Join(h.outside, "keep"), "outside", 0o644)
	write(t, filepath.Join(h.root, "a.txt"), "alpha", 0o644)
	os.Symlink(h.outside, filepath.Join(h.root, "sub"))
	_, h.sent = send(t, h.root)
	if h.sent.Entries["sub"].Type != TypeSymlink {
		t.Fatalf("sub sent as %+v", h.sent.Entries["sub"])
	}
	stream := newTar().file("a.txt", "alpha").dir("sub").file("sub/file", "in the workspace").done()
	h.check(t, stream, false, false)
	fi, err := os.Lstat(filepath.Join(h.root, "sub"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("sub: %v, %v", fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(h.root, "sub/file")); err != nil || string(b) != "in the workspace" {
		t.Fatalf("sub/file: %q, %v", b, err)
	}
}

func TestDirBecomesSymlink(t *testing.T) {
	// sub (with b.txt) is replaced by a symlink to outside; b.txt's deletion must happen in
	// the real directory, before it is replaced, and nothing outside may go.
	h := newHostile(t)
	stream := newTar().file("a.txt", "alpha").symlink("sub", h.outside).done()
	res := h.check(t, stream, false, false)
	if target, err := os.Readlink(filepath.Join(h.root, "sub")); err != nil || target != h.outside {
		t.Fatalf("sub: %q, %v", target, err)
	}
	if res.Deleted != 1 || len(res.Skipped) != 0 {
		t.Errorf("result: %+v", res)
	}
}

func TestHardlinks(t *testing.T) {
	for _, target := range []string{"/etc/passwd", "../x", "../outside/keep", "sub/../../x", "missing", "sub"} {
		t.Run(target, func(t *testing.T) {
			h := newHostile(t)
			b := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta")
			b.add(&tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: target}, "")
			h.check(t, b.done(), true, false)
		})
	}
	t.Run("inside", func(t *testing.T) {
		// To a file of the stream: becomes a copy, never a link.
		h := newHostile(t)
		b := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta")
		b.add(&tar.Header{Typeflag: tar.TypeLink, Name: "hl", Linkname: "sub/b.txt"}, "")
		h.check(t, b.done(), false, false)
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(h.root, "hl"), &st); err != nil || st.Nlink != 1 {
			t.Fatalf("hl: nlink %d, %v", st.Nlink, err)
		}
		if b, _ := os.ReadFile(filepath.Join(h.root, "hl")); string(b) != "beta" {
			t.Fatalf("hl content %q", b)
		}
	})
}

func TestDevicesAndFifos(t *testing.T) {
	for _, typ := range []byte{tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeGNUSparse, 'Z'} {
		t.Run(string(typ), func(t *testing.T) {
			h := newHostile(t)
			b := newTar().file("a.txt", "changed").dir("sub").file("sub/b.txt", "beta")
			b.add(&tar.Header{Typeflag: typ, Name: "dev", Devmajor: 1, Devminor: 3}, "")
			h.check(t, b.done(), true, false)
			if _, err := os.Lstat(filepath.Join(h.root, "dev")); err == nil {
				t.Fatal("dev made")
			}
		})
	}
}

func TestSetIDStripped(t *testing.T) {
	h := newHostile(t)
	b := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta")
	b.add(&tar.Header{Typeflag: tar.TypeReg, Name: "suid", Mode: 0o4755, Uid: 0}, "#!/bin/sh\n")
	b.add(&tar.Header{Typeflag: tar.TypeReg, Name: "sgid", Mode: 0o2755, Uid: 0}, "x")
	b.add(&tar.Header{Typeflag: tar.TypeDir, Name: "sticky/", Mode: 0o1777}, "")
	res := h.check(t, b.done(), false, false)
	for name, want := range map[string]fs.FileMode{"suid": 0o755, "sgid": 0o755, "sticky": fs.ModeDir | 0o777} {
		fi, err := os.Lstat(filepath.Join(h.root, name))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want %v", name, fi.Mode(), err, want)
		}
	}
	if len(res.Stripped) != 3 {
		t.Errorf("stripped: %v", res.Stripped)
	}
}

func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root, and CI runs as root")
		}
		t.Skip("needs root")
	}
	for _, keep := range []bool{false, true} {
		h := newHostile(t)
		b := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta")
		b.add(&tar.Header{Typeflag: tar.TypeReg, Name: "owned", Uid: 1234, Gid: 5678}, "x")
		res, err := receive(t, b.done(), h.root, h.sent, ReceiveOptions{KeepOwner: keep})
		if err != nil {
			t.Fatal(err, res)
		}
		var st unix.Stat_t
		unix.Lstat(filepath.Join(h.root, "owned"), &st)
		wantUID, wantGID := uint32(os.Getuid()), uint32(os.Getgid())
		if keep {
			wantUID, wantGID = 1234, 5678
		}
		if st.Uid != wantUID || st.Gid != wantGID {
			t.Errorf("keep=%v: owner %d:%d", keep, st.Uid, st.Gid)
		}
	}
}

// returned is a valid return stream that deletes sub/b.txt and rewrites a.txt.
func returned() *tarB {
	return newTar().file("a.txt", "changed").dir("sub").file("new.txt", strings.Repeat("n", 3000))
}

func TestTruncated(t *testing.T) {
	full := returned().done()
	// Cut inside new.txt's content, and exactly at an entry boundary (just before the end
	// marker, which a tar reader alone would take for a complete archive).
	boundary := returned()
	boundary.tw.Flush()
	for name, stream := range map[string][]byte{
		"mid-entry":     full[:2000],
		"entry-bound":   boundary.buf.Bytes(),
		"before-marker": full[:len(boundary.buf.Bytes())+200],
		"empty":         nil,
	} {
		t.Run(name, func(t *testing.T) {
			h := newHostile(t)
			h.check(t, stream, true, false)
			if _, err := receive(t, stream, h.root, h.sent, ReceiveOptions{}); !errors.Is(err, ErrInvalid) {
				t.Errorf("err %v, want ErrInvalid", err)
			}
		})
	}
	t.Run("wrong-count", func(t *testing.T) {
		h := newHostile(t)
		b := returned()
		b.n--
		h.check(t, b.done(), true, false)
	})
	t.Run("failing-reader", func(t *testing.T) {
		h := newHostile(t)
		inside := snapshot(t, h.root)
		r := io.MultiReader(bytes.NewReader(full[:3000]), iotestErr{})
		if _, err := Receive(context.Background(), r, h.root, h.sent, ReceiveOptions{Staging: t.TempDir()}); err == nil {
			t.Fatal("no error")
		}
		sameSnap(t, "root", snapshot(t, h.root), inside)
	})
	t.Run("cancelled", func(t *testing.T) {
		h := newHostile(t)
		inside := snapshot(t, h.root)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Receive(ctx, bytes.NewReader(full), h.root, h.sent, ReceiveOptions{Staging: t.TempDir()}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err %v", err)
		}
		sameSnap(t, "root", snapshot(t, h.root), inside)
	})
}

type iotestErr struct{}

func (iotestErr) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestLimits(t *testing.T) {
	h := newHostile(t)
	stream := returned().done()
	inside := snapshot(t, h.root)
	for _, opt := range []ReceiveOptions{{MaxBytes: 2999}, {MaxEntries: 2}} {
		opt.Staging = t.TempDir()
		_, err := Receive(context.Background(), bytes.NewReader(stream), h.root, h.sent, opt)
		if !errors.Is(err, ErrLimit) {
			t.Errorf("%+v: err %v", opt, err)
		}
		sameSnap(t, "root", snapshot(t, h.root), inside)
	}
	// A header claiming a huge size is refused before its content is read.
	b := newTar()
	b.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: 1 << 40, Mode: 0o644})
	_, err := receive(t, b.buf.Bytes(), h.root, h.sent, ReceiveOptions{MaxBytes: 1 << 20})
	if !errors.Is(err, ErrLimit) {
		t.Errorf("big: err %v", err)
	}
	// Exactly at the limits is fine.
	res, err := receive(t, stream, h.root, h.sent, ReceiveOptions{MaxBytes: 3007, MaxEntries: 3})
	if err != nil || res.Deleted != 1 {
		t.Errorf("at the limits: %+v, %v", res, err)
	}
}

func TestDeletionLimitedToSent(t *testing.T) {
	h := newHostile(t)
	write(t, filepath.Join(h.root, "sub/keep/x"), "x", 0o644)
	write(t, filepath.Join(h.root, "other/y"), "y", 0o644)
	write(t, filepath.Join(h.root, "gone/z"), "z", 0o644)
	write(t, filepath.Join(h.root, "edited"), "v1", 0o644)
	setTimes(t, h.root)
	_, h.sent = send(t, h.root)
	// After Send, on the host: new files, one in a directory the pod deletes; an edit.
	write(t, filepath.Join(h.root, "host-new"), "new", 0o644)
	write(t, filepath.Join(h.root, "gone/host-new"), "new", 0o644)
	write(t, filepath.Join(h.root, "edited"), "v2, longer", 0o644)
	// The pod deleted everything.
	res, err := receive(t, newTar().done(), h.root, h.sent, ReceiveOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got := snapshot(t, h.root)
	for _, kept := range []string{"host-new", "gone", "gone/host-new", "edited"} {
		if _, ok := got[kept]; !ok {
			t.Errorf("%s deleted", kept)
		}
	}
	if len(got) != 4 {
		t.Errorf("left: %v", got)
	}
	// a.txt sub/b.txt sub/keep/x sub/keep sub other/y other gone/z.
	if res.Deleted != 8 || len(res.Skipped) != 2 {
		t.Errorf("result %+v", res)
	}
}

func TestUnpackRefuses(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "pod")
	for _, stream := range [][]byte{
		newTar().file("../x", "x").done(),
		newTar().file(filepath.Join(base, "x"), "x").done(),
		newTar().symlink("l", base).file("l/x", "x").done(),
		newTar().add(&tar.Header{Typeflag: tar.TypeChar, Name: "dev"}, "").done(),
	} {
		if err := Unpack(bytes.NewReader(stream), dir); err == nil {
			t.Error("no error")
		}
	}
	if _, err := os.Lstat(filepath.Join(base, "x")); err == nil {
		t.Fatal("escaped")
	}
	b := newTar().file("a", "a")
	b.tw.Flush()
	if err := Unpack(bytes.NewReader(b.buf.Bytes()), dir); err == nil {
		t.Error("truncated: no error")
	}
}

func TestFileOverHostSymlink(t *testing.T) {
	// Sent as a symlink to outside; the pod made it a file: the link is replaced, and the
	// file it pointed to is left alone.
	h := &hostile{base: t.TempDir()}
	h.root = filepath.Join(h.base, "ws")
	h.outside = filepath.Join(h.base, "outside")
	write(t, filepath.Join(h.outside, "keep"), "outside", 0o644)
	write(t, filepath.Join(h.root, "plain"), "plain", 0o644)
	os.Symlink(filepath.Join(h.outside, "keep"), filepath.Join(h.root, "a.txt"))
	_, h.sent = send(t, h.root)
	// After Send the host makes plain a symlink to outside too; the pod rewrote plain.
	os.Remove(filepath.Join(h.root, "plain"))
	os.Symlink(filepath.Join(h.outside, "keep"), filepath.Join(h.root, "plain"))
	stream := newTar().file("a.txt", "pwned?").file("plain", "pwned?").done()
	res := h.check(t, stream, false, true)
	if fi, err := os.Lstat(filepath.Join(h.root, "a.txt")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("a.txt: %v, %v", fi, err)
	}
	if fi, err := os.Lstat(filepath.Join(h.root, "plain")); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Errorf("plain: %v, %v", fi, err)
	}
	if len(res.Skipped) != 1 || res.Skipped[0].Path != "plain" {
		t.Errorf("result %+v", res)
	}
}

func TestSendSkipsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "f"), "f", 0o644)
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(dir, "sock")}); err != nil {
		t.Fatal(err)
	}
	_, m := send(t, dir)
	if len(m.Entries) != 1 || m.Entries["f"].Type != TypeFile {
		t.Errorf("manifest %+v", m)
	}
	var buf bytes.Buffer
	if err := Pack(&buf, dir); err != nil {
		t.Fatal(err)
	}
}

func TestReplaceOnlyWhatWasSent(t *testing.T) {
	// The pod turned edited and made into directories; on the host edited was changed
	// after Send and made did not exist then: neither host file may be removed for it.
	h := newHostile(t)
	write(t, filepath.Join(h.root, "edited"), "v1", 0o644)
	_, h.sent = send(t, h.root)
	write(t, filepath.Join(h.root, "edited"), "v2, longer", 0o644)
	write(t, filepath.Join(h.root, "made"), "host", 0o644)
	stream := newTar().file("a.txt", "alpha").dir("sub").file("sub/b.txt", "beta").
		dir("edited").file("edited/x", "x").dir("made").file("made/y", "y").done()
	res := h.check(t, stream, false, true)
	for name, want := range map[string]string{"edited": "v2, longer", "made": "host"} {
		if b, err := os.ReadFile(filepath.Join(h.root, name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v", name, b, err)
		}
	}
	if len(res.Skipped) != 4 { // edited, edited/x, made, made/y
		t.Errorf("result %+v", res)
	}
}
