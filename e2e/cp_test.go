package e2e

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cpWorkload prepares a container for TestCp: its own /etc/passwd line, links pointing out,
// then waits for files copied in, prints them, and removes its tar.
const cpWorkload = `echo cpmarker:x:999:999::/:/bin/sh >> /etc/passwd
mkdir -p /data/sub && echo inside > /data/sub/f && ln -s /etc/shadow /data/shadowlink && ln -s ../../.. /data/up
echo ready
while [ ! -e /tmp/in/go ]; do sleep 0.2; done
cat /tmp/in/hello.txt /tmp/in/dir/nested.txt
rm /bin/tar
echo tar-gone
sleep 120`

// TestCp: files and directories both ways, tar streams both ways, on both runtimes; paths in
// the container resolve inside it (.., symlinks out), and errors are clear.
func TestCp(t *testing.T) {
	requireStack(t)
	hostPasswd, _ := os.ReadFile("/etc/passwd")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			host := t.TempDir()
			name := "cp-" + rt
			id := strings.TrimSpace(mustRun(t, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", cpWorkload)...).stdout)
			t.Cleanup(func() { moatcRun(t, opts{}, "destroy", "--force", id) })
			waitLog(t, name, "ready")

			// A file out, to a new name; a directory out, into an existing directory.
			mustRun(t, "cp", name+":/data/sub/f", filepath.Join(host, "f-out"))
			mustRead(t, filepath.Join(host, "f-out"), "inside\n")
			mustRun(t, "cp", name+":/data", host)
			mustRead(t, filepath.Join(host, "data/sub/f"), "inside\n")
			// Links pointing out of the container come over as links, never as host files.
			for link, target := range map[string]string{"data/shadowlink": "/etc/shadow", "data/up": "../../.."} {
				fi, err := os.Lstat(filepath.Join(host, link))
				if err != nil || fi.Mode()&os.ModeSymlink == 0 {
					t.Errorf("%s: not a symlink: %v %v", link, fi, err)
				} else if l, _ := os.Readlink(filepath.Join(host, link)); l != target {
					t.Errorf("%s -> %q, want %q", link, l, target)
				}
			}
			mustRun(t, "cp", name+":/data/shadowlink", filepath.Join(host, "s"))
			if fi, err := os.Lstat(filepath.Join(host, "s")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Errorf("a symlink to /etc/shadow copied out: %v %v", fi, err)
			}
			// .. and a symlink to ../../.. resolve inside the container: its passwd, not the host's.
			for i, src := range []string{"/../../etc/passwd", "/data/up/etc/passwd"} {
				out := filepath.Join(host, "passwd"+string(rune('0'+i)))
				mustRun(t, "cp", name+":"+src, out)
				b, _ := os.ReadFile(out)
				if !strings.Contains(string(b), "cpmarker") || bytes.Equal(b, hostPasswd) {
					t.Errorf("cp %s: not the container's passwd: %q", src, b)
				}
			}

			// A tar stream out.
			r := mustRun(t, "cp", name+":/data/sub/f", "-")
			tr := tar.NewReader(strings.NewReader(r.stdout))
			if h, err := tr.Next(); err != nil || h.Name != "f" {
				t.Errorf("tar stream out: %v %v", h, err)
			} else if b, _ := io.ReadAll(tr); string(b) != "inside\n" {
				t.Errorf("tar stream out: %q", b)
			}

			// A tar stream in, checked by copying it back out.
			var tb bytes.Buffer
			tw := tar.NewWriter(&tb)
			tw.WriteHeader(&tar.Header{Name: "stream.txt", Mode: 0o640, Size: 7, Typeflag: tar.TypeReg})
			tw.Write([]byte("stream\n"))
			tw.Close()
			if r := moatcRun(t, opts{stdin: tb.String()}, "cp", "-", name+":/tmp"); r.code != 0 {
				t.Fatalf("cp - %s:/tmp: exit %d: %s", name, r.code, r.stderr)
			}
			mustRun(t, "cp", name+":/tmp/stream.txt", filepath.Join(host, "stream-back"))
			mustRead(t, filepath.Join(host, "stream-back"), "stream\n")
			if fi, _ := os.Stat(filepath.Join(host, "stream-back")); fi == nil || fi.Mode().Perm() != 0o640 {
				t.Errorf("mode not kept: %v", fi)
			}

			// A directory and a file in; the workload prints them, then removes its tar.
			in := filepath.Join(host, "in")
			os.MkdirAll(filepath.Join(in, "dir"), 0o755)
			os.WriteFile(filepath.Join(in, "hello.txt"), []byte("hello-from-host\n"), 0o644)
			os.WriteFile(filepath.Join(in, "dir/nested.txt"), []byte("nested-from-host\n"), 0o644)
			os.WriteFile(filepath.Join(host, "go"), nil, 0o644)
			mustRun(t, "cp", in, name+":/tmp/in")
			mustRun(t, "cp", filepath.Join(host, "go"), name+":/tmp/in/go")
			waitLog(t, name, "nested-from-host")
			waitLog(t, name, "tar-gone")
			if l := mustRun(t, "logs", name).stdout; !strings.Contains(l, "hello-from-host") {
				t.Errorf("the file copied in is not there: %q", l)
			}

			for _, c := range []struct {
				args []string
				want string
			}{
				{[]string{"cp", name + ":/data/sub/f", filepath.Join(host, "again")}, "cp needs tar"},
				{[]string{"cp", filepath.Join(host, "go"), name + ":/tmp/x"}, "cp needs tar"},
			} {
				r := moatcRun(t, opts{}, c.args...)
				if r.code != 125 || !strings.Contains(r.stderr, c.want) {
					t.Errorf("%v: exit %d, %q; want 125 and %q", c.args, r.code, r.stderr, c.want)
				}
			}
			mustRun(t, "stop", "-t", "1", name)
			if r := moatcRun(t, opts{}, "cp", name+":/data", host); r.code != 125 || !strings.Contains(r.stderr, "not running") {
				t.Errorf("cp from a stopped run: exit %d, %q", r.code, r.stderr)
			}
		})
	}
}

// TestCpErrors: no such path, bad arguments, an unknown run.
func TestCpErrors(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	host := t.TempDir()
	id := strings.TrimSpace(mustRun(t, busyboxRun("runc", []string{"-d", "-n", "cp-err"}, ws, "sleep", "60")...).stdout)
	t.Cleanup(func() { moatcRun(t, opts{}, "destroy", "--force", id) })
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"cp", "cp-err:/no/such/file", host}, 125, "no/such/file"},
		{[]string{"cp", filepath.Join(host, "missing"), "cp-err:/tmp"}, 125, "no such file"},
		{[]string{"cp", "no-such-run:/etc/passwd", host}, 125, "moatc list"},
		{[]string{"cp", host, filepath.Join(host, "x")}, 2, "exactly one"},
		{[]string{"cp", "cp-err:/a", "cp-err:/b"}, 2, "exactly one"},
		{[]string{"cp", "cp-err:/etc/passwd"}, 2, "SRC and DEST"},
	} {
		r := moatcRun(t, opts{}, c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
}

func mustRead(t *testing.T, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil || string(b) != want {
		t.Errorf("%s: %q %v, want %q", p, b, err, want)
	}
}
