package builder

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/creack/pty"
	"github.com/moatc/moatc/deps"
)

// The test's dependency list: apt (jq), node + an npm global (typescript), Go from the
// toolchain module + a go: tool, and a binary downloaded from the test's file server (on the
// stand-in machine "files": builds cannot reach the host itself).
var testList = []string{"jq", "node", "typescript", "go", "go:golang.org/x/example/hello@latest", "hello-bin"}

// fileServer serves hello.tar.gz (hello-1.0/bin/moatc-hello, a shell script) from the
// stand-in machine files.
type fileServer struct {
	URL  string
	sum  string
	hits atomic.Int64
}

func newFileServer(t *testing.T) *fileServer {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	script := "#!/bin/sh\necho \"hello from a downloaded binary\"\n"
	tw.WriteHeader(&tar.Header{Name: "hello-1.0/bin/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "hello-1.0/bin/moatc-hello", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(script))})
	tw.Write([]byte(script))
	tw.Close()
	gz.Close()
	body := buf.Bytes()
	sum := sha256.Sum256(body)
	fs := &fileServer{sum: hex.EncodeToString(sum[:])}
	url, err := files.Serve(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/hello.tar.gz" {
			http.NotFound(w, r)
			return
		}
		fs.hits.Add(1)
		w.Write(body)
	}), 0)
	if err != nil {
		t.Fatal(err)
	}
	fs.URL = url
	return fs
}

// registry is the default registry plus hello-bin (right checksum) and hello-bad (wrong one).
func (fs *fileServer) registry(t *testing.T) *deps.Registry {
	entry := func(name, sum string) string {
		return fmt.Sprintf(`%s:
  kind: binary
  description: a test program served by the test
  default: "1.0"
  versions:
    "1.0":
      version: 1.0.0
      files:
        - url: %s/hello.tar.gz
          sha256: %s
          format: tar.gz
          place: {hello-1.0/bin/moatc-hello: /usr/local/bin/moatc-hello}
`, name, fs.URL, sum)
	}
	r, err := deps.Default().Extend([]byte(entry("hello-bin", fs.sum) + entry("hello-bad", strings.Repeat("0", 64))))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func planFor(t testing.TB, r *deps.Registry, list ...string) *deps.Plan {
	t.Helper()
	var es []deps.Entry
	for i, s := range list {
		es = append(es, deps.Entry{Text: s, File: "moatc.yaml", Line: i + 2})
	}
	ds, err := r.Parse(es)
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Resolve(ds)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The main image is built once and shared by the tests that inspect it.
var shared struct {
	once    sync.Once
	fs      *fileServer
	name    string
	tag     string
	req     Request
	logPath string
	out     string
	err     error
	took    time.Duration
}

func mainImage(t *testing.T) string {
	t.Helper()
	requireStack(t)
	shared.once.Do(func() {
		shared.fs = newFileServer(t)
		p := planFor(t, shared.fs.registry(t), testList...)
		shared.tag = p.Tag("debian:bookworm-slim")
		shared.logPath = filepath.Join(testDir, "logs", "main.log")
		var out bytes.Buffer
		shared.req = Request{Dockerfile: p.Dockerfile("debian:bookworm-slim"), Tag: shared.tag, Progress: &out, Mode: ModePlain, LogPath: shared.logPath}
		ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
		defer cancel()
		start := time.Now()
		shared.name, shared.err = Build(ctx, testDaemon, shared.req)
		shared.took = time.Since(start)
		shared.out = out.String()
		t.Logf("cold build of %v: %.1fs", testList, shared.took.Seconds())
	})
	if shared.err != nil {
		t.Fatalf("building the test image: %v\nprogress:\n%s", shared.err, lastLines(shared.out, 40))
	}
	return shared.name
}

// run runs a command in the image with ctr (runc) and returns its output.
func run(t *testing.T, image string, args ...string) string {
	t.Helper()
	id := fmt.Sprintf("t%d", time.Now().UnixNano())
	out, err := ctr(append([]string{"run", "--rm", image, id}, args...)...)
	if err != nil {
		t.Fatalf("ctr run %s %v: %v\n%s", image, args, err, out)
	}
	return strings.TrimSpace(out)
}

func TestBuildToolchainImage(t *testing.T) {
	name := mainImage(t)
	if want, _ := ImageName(shared.tag); name != want || !strings.HasPrefix(name, "docker.io/moatc/run:") {
		t.Errorf("Build returned %q, want %q", name, want)
	}
	// Unpacked by the build (unpack=true), before anything ran it.
	c, err := containerd.New(ctrdSock, containerd.WithDefaultNamespace(testNamespace))
	if err != nil {
		t.Fatal(err)
	}
	img, err := c.GetImage(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := img.IsUnpacked(context.Background(), "overlayfs"); err != nil || !ok {
		t.Errorf("image not unpacked for overlayfs after the build: %v, %v", ok, err)
	}
	cfg, err := img.Spec(context.Background())
	if err != nil || cfg.Config.User != deps.User || !strings.Contains(strings.Join(cfg.Config.Env, " "), "/usr/local/go/bin") {
		t.Errorf("image config: user %q env %v (%v)", cfg.Config.User, cfg.Config.Env, err)
	}
	c.Close()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"jq", "--version"}, "jq-1.6"},
		{[]string{"node", "--version"}, "v24.21.0"},
		{[]string{"npm", "--version"}, "11.21.2"},
		{[]string{"tsc", "--version"}, "Version"},
		{[]string{"go", "version"}, "go version go1.27.4 linux/amd64"},
		{[]string{"hello"}, "Hello, world!"},
		{[]string{"moatc-hello"}, "hello from a downloaded binary"},
		{[]string{"id", "-un"}, deps.User},
	} {
		got := run(t, name, c.args...)
		if !strings.Contains(got, c.want) {
			t.Errorf("%v in the image: %q, want %q", c.args, got, c.want)
		}
		t.Logf("ctr run --rm %s: %s -> %s", strings.Join(c.args, " "), name, got)
	}
	if shared.fs.hits.Load() != 1 {
		t.Errorf("the file server was asked %d times, want 1", shared.fs.hits.Load())
	}
	// Plain progress went to the writer; the log file has every step and its output.
	if !strings.Contains(shared.out, "[internal] load build definition") {
		t.Errorf("plain progress lacks the build steps:\n%s", lastLines(shared.out, 20))
	}
	log, err := os.ReadFile(shared.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"moatc: building " + name, "moatc: fetching " + shared.fs.URL + "/hello.tar.gz", "apt-get install", "moatc: built " + name} {
		if !bytes.Contains(log, []byte(w)) {
			t.Errorf("build log lacks %q", w)
		}
	}
}

func TestBuildSkipsExistingImage(t *testing.T) {
	name := mainImage(t)
	before := imageRecord(t, name)
	ok, err := Exists(context.Background(), testDaemon, shared.tag)
	if err != nil || !ok {
		t.Fatalf("Exists(%s) = %v, %v", shared.tag, ok, err)
	}
	var out bytes.Buffer
	req := shared.req
	req.Progress, req.LogPath = &out, filepath.Join(testDir, "logs", "again.log")
	got, err := Build(context.Background(), testDaemon, req)
	if err != nil || got != name {
		t.Fatalf("second Build = %q, %v", got, err)
	}
	after := imageRecord(t, name)
	if !after.CreatedAt.Equal(before.CreatedAt) || !after.UpdatedAt.Equal(before.UpdatedAt) || after.Target.Digest != before.Target.Digest {
		t.Errorf("the image record changed: before created %v updated %v %s, after created %v updated %v %s",
			before.CreatedAt, before.UpdatedAt, before.Target.Digest, after.CreatedAt, after.UpdatedAt, after.Target.Digest)
	}
	if !strings.Contains(out.String(), "exists; nothing to build") || strings.Contains(out.String(), "[internal]") {
		t.Errorf("second Build's progress: %q", out.String())
	}
	t.Logf("image %s: created %v, unchanged by the second Build", name, before.CreatedAt.Format(time.RFC3339Nano))
}

type imageRec struct {
	CreatedAt, UpdatedAt time.Time
	Target               struct{ Digest string }
}

func imageRecord(t *testing.T, name string) imageRec {
	t.Helper()
	c, err := containerd.New(ctrdSock, containerd.WithDefaultNamespace(testNamespace))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img, err := c.ImageService().Get(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	r := imageRec{CreatedAt: img.CreatedAt, UpdatedAt: img.UpdatedAt}
	r.Target.Digest = img.Target.Digest.String()
	return r
}

func TestBuildChecksumMismatch(t *testing.T) {
	mainImage(t) // its layers make this build quick
	p := planFor(t, shared.fs.registry(t), "jq", "hello-bad")
	logPath := filepath.Join(testDir, "logs", "bad.log")
	req := Request{Dockerfile: p.Dockerfile("debian:bookworm-slim"), Tag: p.Tag("debian:bookworm-slim"), Mode: ModeQuiet, LogPath: logPath}
	_, err := Build(context.Background(), testDaemon, req)
	var se *StepError
	if !errors.As(err, &se) {
		t.Fatalf("Build with a wrong checksum: %v; want a *StepError", err)
	}
	msg := err.Error()
	t.Logf("the error, as a user sees it:\n%s", msg)
	for _, w := range []string{"checksum mismatch for " + shared.fs.URL + "/hello.tar.gz", "expected sha256 " + strings.Repeat("0", 64), "got " + shared.fs.sum, "hello-bad 1.0.0", "full build log: " + logPath} {
		if !strings.Contains(msg, w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if !strings.Contains(se.Step, "RUN") || se.Line == 0 || se.Comment == "" || len(se.Output) == 0 {
		t.Errorf("step %q line %d comment %q output %q", se.Step, se.Line, se.Comment, se.Output)
	}
	if ok, _ := Exists(context.Background(), testDaemon, req.Tag); ok {
		t.Error("a failed build left an image")
	}
	if log, _ := os.ReadFile(logPath); !bytes.Contains(log, []byte("checksum mismatch")) {
		t.Error("build log lacks the mismatch")
	}
}

func TestBuildTTYProgress(t *testing.T) {
	mainImage(t)
	ptmx, tty, err := pty.Open()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("prerequisite missing in CI: no pty: %v", err)
		}
		t.Skipf("no pty (not CI, so skipping): %v", err)
	}
	defer ptmx.Close()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, ptmx); close(done) }()
	req := shared.req
	req.Progress, req.Mode, req.Rebuild, req.LogPath = tty, ModeAuto, true, filepath.Join(testDir, "logs", "tty.log")
	_, err = Build(context.Background(), testDaemon, req) // every layer cached: only the export runs
	tty.Close()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "Building") || !strings.Contains(out.String(), "\x1b[") {
		t.Errorf("no live display on the tty: %q", lastLines(out.String(), 10))
	}
}

func TestProgressModeErrors(t *testing.T) {
	d := &Daemon{Dir: t.TempDir(), Prefix: t.TempDir(), ContainerdAddress: "/nonexistent.sock", Namespace: "x"}
	req := Request{Dockerfile: []byte("FROM busybox\n"), Tag: "moatc/run:abc", Mode: "fancy", Rebuild: true}
	if _, err := Build(context.Background(), d, req); err == nil || !strings.Contains(err.Error(), "want auto, tty, plain or quiet") {
		t.Errorf("mode fancy: %v", err)
	}
	if _, err := Build(context.Background(), d, Request{Dockerfile: []byte("x"), Tag: "Not A Tag"}); err == nil {
		t.Error("a bad tag was accepted")
	}
}

func TestStartWithoutBuildkitd(t *testing.T) {
	d := &Daemon{Dir: t.TempDir(), Prefix: t.TempDir(), ContainerdAddress: "/nonexistent.sock", Namespace: "x"}
	err := d.Start(context.Background())
	var ni *NotInstalledError
	if !errors.As(err, &ni) || !strings.Contains(err.Error(), "make setup") || !strings.Contains(err.Error(), filepath.Join(d.Prefix, "bin", "buildkitd")) {
		t.Fatalf("Start without buildkitd: %v", err)
	}
	// Through Build too, against a real containerd (the image is missing, so it must start).
	requireStack(t)
	d.ContainerdAddress = ctrdSock
	_, err = Build(context.Background(), d, Request{Dockerfile: []byte("FROM busybox\n"), Tag: "moatc/run:notthere", Mode: ModeQuiet})
	if !errors.As(err, &ni) {
		t.Fatalf("Build without buildkitd: %v", err)
	}
}

func TestStartWithoutContainerd(t *testing.T) {
	requireStack(t)
	d := &Daemon{Dir: t.TempDir(), Prefix: prefix, ContainerdAddress: filepath.Join(t.TempDir(), "none.sock"), Namespace: "x"}
	var cd *ContainerdDownError
	if err := d.Start(context.Background()); !errors.As(err, &cd) {
		t.Fatalf("Start without containerd: %v", err)
	}
}

func TestStartOnceUnderConcurrency(t *testing.T) {
	requireStack(t)
	d := &Daemon{Dir: filepath.Join(testDir, "bk2"), Prefix: prefix, ContainerdAddress: ctrdSock, Namespace: testNamespace + "-2"}
	extraDaemons = append(extraDaemons, d)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for k := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[k] = d.Start(context.Background()) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := countProcs("buildkitd", d.Dir); n != 1 {
		t.Errorf("%d buildkitd processes for %s, want 1", n, d.Dir)
	}
	if _, ok := d.Pid(); !ok {
		t.Error("no pid file")
	}
	other := *d
	other.Namespace = "elsewhere"
	if err := other.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "other settings") {
		t.Errorf("Start with another namespace on a running daemon: %v", err)
	}
	if err := d.Stop(context.Background(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if d.Answering() || countProcs("buildkitd", d.Dir) != 0 {
		t.Error("buildkitd still there after Stop")
	}
}

// countProcs counts processes of the named binary with an argument under dir. A child of
// one of them (a fork not yet exec'd still shows its parent's command line) is not counted.
func countProcs(name, dir string) int {
	ents, _ := os.ReadDir("/proc")
	ppid := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if filepath.Base(args[0]) != name || !strings.Contains(string(b), dir+"/") {
			continue
		}
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		if len(f) > 1 {
			ppid[e.Name()] = f[1]
		}
	}
	n := 0
	for _, parent := range ppid {
		if _, child := ppid[parent]; !child {
			n++
		}
	}
	return n
}

func lastLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

func TestBuildMissingBaseImage(t *testing.T) {
	requireStack(t)
	df := []byte("FROM docker.io/library/debian:no-such-tag\nRUN true\n")
	start := time.Now()
	_, err := Build(context.Background(), testDaemon, Request{Dockerfile: df, Tag: "moatc/run:missingbase", Mode: ModeQuiet})
	t.Logf("after %.1fs: %v", time.Since(start).Seconds(), err)
	if err == nil || !strings.Contains(err.Error(), "debian:no-such-tag") || !strings.Contains(err.Error(), "moatc image import") {
		t.Fatalf("Build from a missing base: %v", err)
	}
}
