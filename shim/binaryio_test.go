package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v2"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// testLogger is a binary logger as a user would write one for runc. Query
// keys arrive as "key value" pairs: dir (where it writes, one directory per
// container), mode (byte: ready by writing a byte to fd 5; close: by closing
// it; fail: exit 3 before ready; stuck: ready, then ignore EOF and SIGTERM),
// linger (seconds to sleep after EOF, before it exits).
const testLogger = `#!/bin/sh
parse() {
	while [ $# -gt 1 ]; do
		case "$1" in
		dir) dir=$2 ;;
		mode) mode=$2 ;;
		linger) linger=$2 ;;
		esac
		shift 2
	done
}
parse "$@"
d="$dir/$CONTAINER_ID"
mkdir -p "$d"
for a in "$@"; do printf '[%s]\n' "$a"; done >"$d/args"
env >"$d/env"
echo $$ >"$d/pid"
case "$mode" in
fail)
	echo "logger: bad config" >&2
	exit 3 ;;
stuck)
	trap '' TERM
	printf x >&5
	exec 5>&-
	sleep 100 &
	echo $! >"$d/child"
	wait
	exit 0 ;;
esac
cat <&3 >"$d/stdout" 5>&- &
cat <&4 >"$d/stderr" 5>&- &
if [ "$mode" = close ]; then exec 5>&-; else printf x >&5; exec 5>&-; fi
wait
[ -n "$linger" ] && sleep "$linger"
echo done >"$d/done"
`

func writeLogger(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "logger.sh")
	if err := os.WriteFile(path, []byte(testLogger), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func loggerURI(script string, q url.Values) string {
	return (&url.URL{Scheme: "binary", Path: script, RawQuery: q.Encode()}).String()
}

// gone reports whether process pid has exited (it may linger as a zombie).
func gone(pid int) bool {
	st, err := readProcStat(pid)
	return err != nil || st.state == 'Z' || st.state == 'X'
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestBinaryCmd(t *testing.T) {
	u, ok := binaryLogURI("binary:///usr/bin/logger?b=2&a=1&flag&c=")
	if !ok {
		t.Fatal("not a binary URI")
	}
	cmd := binaryCmd(u, "c1", "ns1")
	want := []string{"/usr/bin/logger", "a", "1", "b", "2", "c", "", "flag", ""}
	if !slices.Equal(cmd.Args, want) || cmd.Path != "/usr/bin/logger" {
		t.Errorf("args %q, want %q", cmd.Args, want)
	}
	if !slices.Equal(cmd.Env, []string{"CONTAINER_ID=c1", "CONTAINER_NAMESPACE=ns1"}) {
		t.Errorf("env %q", cmd.Env)
	}
	for _, s := range []string{"/run/containerd/fifo/1/c-stdout", "", "file:///x", "fifo:///x"} {
		if _, ok := binaryLogURI(s); ok {
			t.Errorf("%q taken for a binary URI", s)
		}
	}
	if _, ok := binaryLogURI("binary-v2:///l"); !ok {
		t.Error("binary-v2 not taken")
	}
}

// TestBinaryLoggerProcesses runs the logger's life cycle with real processes
// and containerd's reaper, as in the shim, but without containerd or runsc:
// what a failed start leaves, how a stuck logger is ended, and the delete
// command's clean-up. The reaper reaps every child of the process, so this
// runs in a child test process of its own.
func TestBinaryLoggerProcesses(t *testing.T) {
	if os.Getenv("SHIMTEST_REAPER") != "1" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestBinaryLoggerProcesses$", "-test.v")
		cmd.Env = append(os.Environ(), "SHIMTEST_REAPER=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child test process:\n%s", out)
		if err != nil {
			t.Fatalf("child test process: %v", err)
		}
		return
	}
	// As in the shim: a subreaper whose reaper reaps on SIGCHLD.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	go func() {
		for range sigs {
			_ = reaper.Reap()
		}
	}()
	loggerExitWait, loggerSignalWait, loggerOrphanWait = 300*time.Millisecond, 300*time.Millisecond, 200*time.Millisecond

	dir := t.TempDir()
	script := writeLogger(t, dir)
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), "shimtest"), 30*time.Second)
	defer cancel()
	start := func(t *testing.T, id, mode string, scheme string) (*binaryLogger, *task.CreateTaskRequest, string, error) {
		bundle := filepath.Join(dir, "bundle-"+id)
		if err := os.MkdirAll(bundle, 0o755); err != nil {
			t.Fatal(err)
		}
		uri := loggerURI(script, url.Values{"dir": {dir}, "mode": {mode}})
		uri = strings.Replace(uri, "binary:", scheme+":", 1)
		r := &task.CreateTaskRequest{ID: id, Bundle: bundle, Stdout: uri, Stderr: uri}
		l, err := startBinaryLogger(ctx, r)
		return l, r, bundle, err
	}
	noFiles := func(t *testing.T, bundle string) {
		t.Helper()
		ents, _ := os.ReadDir(bundle)
		for _, e := range ents {
			t.Errorf("left in the bundle: %s", e.Name())
		}
	}

	t.Run("ExitBeforeReady", func(t *testing.T) {
		l, r, bundle, err := start(t, "fail", "fail", "binary")
		if err == nil || l != nil {
			t.Fatalf("start succeeded: %v", l)
		}
		t.Logf("error: %v", err)
		if !strings.Contains(err.Error(), "exited with status 3 before it was ready: logger: bad config") {
			t.Errorf("unclear error: %v", err)
		}
		if !strings.HasPrefix(r.Stdout, "binary:") {
			t.Errorf("stdout rewritten on failure: %s", r.Stdout)
		}
		noFiles(t, bundle)
		if pid := readPid(t, filepath.Join(dir, "fail", "pid")); !gone(pid) {
			t.Errorf("logger %d still running", pid)
		}
	})

	t.Run("V2ClosedWithoutByte", func(t *testing.T) {
		// binary-v2 (containerd 2.2+): closing fd 5 without a byte is a failure.
		l, _, bundle, err := start(t, "v2", "close", "binary-v2")
		if err == nil || l != nil || !strings.Contains(err.Error(), "did not call ready") {
			t.Fatalf("start: %v, %v", l, err)
		}
		noFiles(t, bundle)
		if pid := readPid(t, filepath.Join(dir, "v2", "pid")); !gone(pid) {
			t.Errorf("logger %d still running", pid)
		}
	})

	t.Run("Output", func(t *testing.T) {
		l, r, bundle, err := start(t, "out", "close", "binary")
		if err != nil {
			t.Fatal(err)
		}
		// Stand in for gVisor's copy goroutines: open, write, and close at
		// the container's end.
		var writers []*os.File
		for _, f := range []struct{ path, data string }{{r.Stdout, "to stdout\n"}, {r.Stderr, "to stderr\n"}} {
			w, err := os.OpenFile(f.path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := w.WriteString(f.data); err != nil {
				t.Fatal(err)
			}
			writers = append(writers, w)
		}
		l.created(true)
		time.Sleep(100 * time.Millisecond)
		select {
		case <-l.exited:
			t.Fatal("logger exited while the output was still open")
		default:
		}
		done := l.deleting()
		for _, w := range writers {
			w.Close()
		}
		done(true)
		select {
		case <-l.exited:
		default:
			t.Fatal("deleting returned before the logger exited")
		}
		for name, want := range map[string]string{"stdout": "to stdout\n", "stderr": "to stderr\n", "done": "done\n"} {
			if b, _ := os.ReadFile(filepath.Join(dir, "out", name)); string(b) != want {
				t.Errorf("%s = %q, want %q", name, b, want)
			}
		}
		noFiles(t, bundle)
	})

	t.Run("Stuck", func(t *testing.T) {
		l, _, bundle, err := start(t, "stuck", "stuck", "binary")
		if err != nil {
			t.Fatal(err)
		}
		l.created(true)
		began := time.Now()
		l.deleting()(true)
		took := time.Since(began)
		select {
		case <-l.exited:
		default:
			t.Fatal("stuck logger not ended")
		}
		t.Logf("stuck logger ended in %v (status %d)", took, l.status)
		if took < loggerExitWait || took > 5*time.Second {
			t.Errorf("ended after %v", took)
		}
		// Killed with its group (it may take a moment to die).
		child := readPid(t, filepath.Join(dir, "stuck", "child"))
		for deadline := time.Now().Add(time.Second); !gone(child) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if !gone(child) {
			t.Errorf("the logger's child %d survived", child)
		}
		noFiles(t, bundle)
	})

	t.Run("DeleteCommand", func(t *testing.T) {
		// A logger whose shim died: the delete command finds it by its pid
		// file, ends it and removes the FIFOs.
		l, _, bundle, err := start(t, "orphan", "byte", "binary")
		if err != nil {
			t.Fatal(err)
		}
		// The writers stay open (the shim's holds): no EOF, it runs on.
		cleanLoggerFiles(bundle)
		select {
		case <-l.exited:
		case <-time.After(2 * time.Second):
			t.Fatal("orphaned logger not ended")
		}
		noFiles(t, bundle)
		l.release()
	})
}

const (
	stackPrefix = "/opt/moatc"
	testNS      = "shimtest"
)

// stack is a private containerd (own root, state and socket in a temp dir)
// that runs this package's shim, freshly built, under runsc.
type stack struct {
	dir, bin, shimPath, sock, runscConf string
	client                              *containerd.Client
	ctx                                 context.Context
	image                               containerd.Image
	ids                                 []string
}

// TestBinaryLogURIRealStack runs containers under runsc through the shim built
// from this package, on a private containerd, with a binary log URI whose
// logger is a shell script.
func TestBinaryLogURIRealStack(t *testing.T) {
	s := startStack(t)
	script := writeLogger(t, s.dir)
	logs := filepath.Join(s.dir, "logs")
	data := filepath.Join(s.dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, errOut := make([]byte, 1<<20), make([]byte, 256<<10)
	rand.Read(out)
	rand.Read(errOut)
	for name, b := range map[string][]byte{"out.bin": out, "err.bin": errOut} {
		if err := os.WriteFile(filepath.Join(data, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dataMount := oci.WithMounts([]specs.Mount{{Destination: "/data", Type: "bind", Source: data, Options: []string{"rbind", "ro"}}})

	t.Run("Pipes", func(t *testing.T) {
		id := "blog-pipes"
		uri := loggerURI(script, url.Values{"dir": {logs}, "flag": {""}, "linger": {"0.5"}, "mode": {"byte"}})
		u, _ := url.Parse(uri)
		// 1 MB and 256 KB of random bytes, then a line each, with the
		// container's stdout and stderr written in turns.
		c, tk := s.create(t, id, cio.LogURI(u), dataMount, oci.WithProcessArgs("sh", "-c",
			"cat /data/out.bin; cat /data/err.bin >&2; echo tail-out; echo tail-err >&2; exit 7"))
		defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)

		// State reports the stdio the task was created with.
		got, err := s.client.TaskService().Get(s.ctx, &tasksapi.GetRequest{ContainerID: id})
		if err != nil {
			t.Fatal(err)
		}
		if got.Process.Stdout != uri || got.Process.Stderr != uri {
			t.Errorf("task stdio %q %q, want %q", got.Process.Stdout, got.Process.Stderr, uri)
		}

		code := s.run(t, tk)
		if code != 7 {
			t.Errorf("exit status %d, want 7", code)
		}
		began := time.Now()
		if _, err := tk.Delete(s.ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("task delete took %v (the logger lingers 0.5 s after EOF)", time.Since(began))
		d := filepath.Join(logs, id)
		// The logger has exited once Delete returns: its log is complete.
		if _, err := os.Stat(filepath.Join(d, "done")); err != nil {
			t.Errorf("logger not finished when the delete returned: %v", err)
		}
		if pid := readPid(t, filepath.Join(d, "pid")); !gone(pid) {
			t.Errorf("logger %d still running after the delete", pid)
		}
		check := func(name string, want []byte) {
			b, err := os.ReadFile(filepath.Join(d, name))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, want) {
				t.Errorf("%s: %d bytes, want %d (identical: %v)", name, len(b), len(want), bytes.Equal(b, want))
			}
		}
		check("stdout", append(slices.Clone(out), "tail-out\n"...))
		check("stderr", append(slices.Clone(errOut), "tail-err\n"...))

		args, _ := os.ReadFile(filepath.Join(d, "args"))
		if want := fmt.Sprintf("[dir]\n[%s]\n[flag]\n[]\n[linger]\n[0.5]\n[mode]\n[byte]\n", logs); string(args) != want {
			t.Errorf("args:\n%s\nwant:\n%s", args, want)
		}
		env, _ := os.ReadFile(filepath.Join(d, "env"))
		for _, want := range []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + testNS} {
			if !slices.Contains(strings.Split(string(env), "\n"), want) {
				t.Errorf("env lacks %s:\n%s", want, env)
			}
		}
		// As with containerd's runc shim, nothing of the shim's environment.
		if strings.Contains(string(env), "TTRPC_ADDRESS=") {
			t.Errorf("shim environment passed to the logger:\n%s", env)
		}
		s.noLoggerFiles(t)
	})

	t.Run("TTY", func(t *testing.T) {
		id := "blog-tty"
		u, _ := url.Parse(loggerURI(script, url.Values{"dir": {logs}, "mode": {"close"}}))
		c, tk := s.create(t, id, cio.TerminalLogURI(u), oci.WithTTY, oci.WithProcessArgs("sh", "-c", "echo tty-out; echo tty-err >&2"))
		defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
		if code := s.run(t, tk); code != 0 {
			t.Errorf("exit status %d", code)
		}
		if _, err := tk.Delete(s.ctx); err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(logs, id)
		stdout, _ := os.ReadFile(filepath.Join(d, "stdout"))
		stderr, err := os.ReadFile(filepath.Join(d, "stderr"))
		if string(stdout) != "tty-out\r\ntty-err\r\n" || err != nil || len(stderr) != 0 {
			t.Errorf("stdout %q, stderr %q (%v)", stdout, stderr, err)
		}
		if pid := readPid(t, filepath.Join(d, "pid")); !gone(pid) {
			t.Errorf("logger %d still running after the delete", pid)
		}
		s.noLoggerFiles(t)
	})

	// A logger that stops reading (and ignores EOF and SIGTERM), under a
	// container that writes more than the FIFO holds: gVisor's copy goroutine
	// blocks on the FIFO and the inner Delete waits for it. Delete ends the
	// logger after the bound and returns.
	t.Run("StuckLogger", func(t *testing.T) {
		id := "blog-stuck"
		u, _ := url.Parse(loggerURI(script, url.Values{"dir": {logs}, "mode": {"stuck"}}))
		c, tk := s.create(t, id, cio.LogURI(u), dataMount, oci.WithProcessArgs("sh", "-c", "cat /data/out.bin; echo unreachable"))
		defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
		exit, err := tk.Wait(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tk.Start(s.ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // the container blocks on its stdout
		if err := tk.Kill(s.ctx, unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		<-exit
		began := time.Now()
		if _, err := tk.Delete(s.ctx); err != nil {
			t.Fatal(err)
		}
		took := time.Since(began)
		t.Logf("task delete took %v", took)
		if took < loggerExitWait || took > loggerExitWait+3*loggerSignalWait {
			t.Errorf("delete took %v", took)
		}
		d := filepath.Join(logs, id)
		s.waitGone(t, readPid(t, filepath.Join(d, "pid")), readPid(t, filepath.Join(d, "child")))
		s.noLoggerFiles(t)
	})

	// The shim dies with the logger running: containerd's clean-up of the
	// dead shim (the delete command, manager.Stop) ends the logger and
	// removes the FIFOs.
	t.Run("ShimKilled", func(t *testing.T) {
		id := "blog-shimkill"
		u, _ := url.Parse(loggerURI(script, url.Values{"dir": {logs}, "mode": {"stuck"}}))
		c, tk := s.create(t, id, cio.LogURI(u), oci.WithProcessArgs("sleep", "100"))
		defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
		exit, err := tk.Wait(s.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := tk.Start(s.ctx); err != nil {
			t.Fatal(err)
		}
		shims := s.processes(func(exe, cmdline string) bool {
			return exe == s.shimPath && strings.Contains(cmdline, "\x00-id\x00"+id+"\x00")
		})
		if len(shims) != 1 {
			t.Fatalf("shims of %s: %v", id, shims)
		}
		unix.Kill(shims[0], unix.SIGKILL)
		<-exit // an error at once: the shim is gone
		// containerd runs the delete command, then removes the bundle.
		bundle := filepath.Join(s.dir, "state", "io.containerd.runtime.v2.task", testNS, id)
		for deadline := time.Now().Add(10 * time.Second); dirExists(bundle); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("containerd did not clean up after the dead shim")
			}
		}
		d := filepath.Join(logs, id)
		s.waitGone(t, readPid(t, filepath.Join(d, "pid")), readPid(t, filepath.Join(d, "child")))
		s.noLoggerFiles(t)
		tk.Delete(s.ctx)
	})

	t.Run("LoggerFails", func(t *testing.T) {
		id := "blog-fail"
		u, _ := url.Parse(loggerURI(script, url.Values{"dir": {logs}, "mode": {"fail"}}))
		c := s.container(t, id, oci.WithProcessArgs("true"))
		defer c.Delete(s.ctx, containerd.WithSnapshotCleanup)
		tk, err := c.NewTask(s.ctx, cio.LogURI(u))
		if err == nil {
			tk.Delete(s.ctx, containerd.WithProcessKill)
			t.Fatal("task created with a failing logger")
		}
		t.Logf("create error: %v", err)
		if !strings.Contains(err.Error(), "logging binary "+script+" exited with status 3 before it was ready: logger: bad config") {
			t.Errorf("unclear error: %v", err)
		}
		if pid := readPid(t, filepath.Join(logs, id, "pid")); !gone(pid) {
			t.Errorf("logger %d still running", pid)
		}
		s.noLoggerFiles(t)
		// Its shim is gone too.
		deadline := time.Now().Add(5 * time.Second)
		for len(s.processes(func(exe, cmdline string) bool {
			return exe == s.shimPath && strings.Contains(cmdline, "\x00-id\x00"+id+"\x00")
		})) > 0 {
			if time.Now().After(deadline) {
				t.Fatal("shim of the failed task still running")
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func startStack(t *testing.T) *stack {
	// Skipped without root or without the stack, unless CI=true; with the
	// stack present, any missing part of it is a failure.
	daemonBin := filepath.Join(stackPrefix, "bin", "containerd")
	if _, err := os.Stat(daemonBin); os.Geteuid() != 0 || err != nil {
		why := fmt.Sprintf("needs root (euid %d) and %s (%v)", os.Geteuid(), daemonBin, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why + " (not CI, so skipping)")
	}
	for _, p := range []string{filepath.Join(stackPrefix, "bin", "runsc"), filepath.Join(stackPrefix, "images", "busybox.oci.tar")} {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
	}

	s := &stack{dir: t.TempDir()}
	s.bin = filepath.Join(s.dir, "bin")
	s.shimPath = filepath.Join(s.bin, "containerd-shim-runsc-v1")
	s.sock = filepath.Join(s.dir, "containerd.sock")
	// Runs before t.TempDir's removal (clean-ups run last first).
	t.Cleanup(func() { s.cleanup(t) })

	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if p, err := exec.LookPath("go"); err == nil {
		goBin = p
	}
	build := exec.Command(goBin, "build", "-o", s.shimPath, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build shim: %v\n%s", err, out)
	}

	s.runscConf = filepath.Join(s.dir, "runsc.toml")
	conf := fmt.Sprintf("binary_name = %q\nroot = %q\n\n[runsc_config]\n  platform = \"systrap\"\n  network = \"none\"\n",
		filepath.Join(stackPrefix, "bin", "runsc"), filepath.Join(s.dir, "runsc"))
	q := strconv.Quote
	ctrdConf := `version = 3
root = ` + q(filepath.Join(s.dir, "root")) + `
state = ` + q(filepath.Join(s.dir, "state")) + `
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
]

[grpc]
  address = ` + q(s.sock) + `

[ttrpc]
  address = ` + q(s.sock+".ttrpc") + `

[plugins."io.containerd.internal.v1.opt"]
  path = ` + q(filepath.Join(s.dir, "opt")) + `
`
	for path, content := range map[string]string{s.runscConf: conf, filepath.Join(s.dir, "containerd.toml"): ctrdConf} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(filepath.Join(s.dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	daemon := exec.Command(daemonBin, "--config", filepath.Join(s.dir, "containerd.toml"), "--log-level", "debug")
	// This shim first, so containerd finds it, not the installed one.
	daemon.Env = append(os.Environ(), "PATH="+s.bin+":"+filepath.Join(stackPrefix, "bin")+":"+os.Getenv("PATH"))
	daemon.Stdout, daemon.Stderr = logf, logf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	go daemon.Wait()

	s.ctx = namespaces.WithNamespace(context.Background(), testNS)
	ctx, cancel := context.WithTimeout(s.ctx, 90*time.Second)
	t.Cleanup(cancel)
	s.ctx = ctx
	deadline := time.Now().Add(15 * time.Second)
	for {
		if s.client, err = containerd.New(s.sock, containerd.WithTimeout(time.Second)); err == nil {
			if _, err = s.client.Version(s.ctx); err == nil {
				break
			}
			s.client.Close()
			s.client = nil
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not answer: %v\n%s", err, s.log())
		}
		time.Sleep(100 * time.Millisecond)
	}

	f, err := os.Open(filepath.Join(stackPrefix, "images", "busybox.oci.tar"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	imgs, err := s.client.Import(s.ctx, f)
	if err != nil || len(imgs) == 0 {
		t.Fatalf("import busybox: %v", err)
	}
	s.image = containerd.NewImage(s.client, imgs[0])
	if err := s.image.Unpack(s.ctx, ""); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (end):\n%s", s.log())
		}
	})
	return s
}

func (s *stack) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "containerd.log"))
	if len(b) > 12000 {
		b = b[len(b)-12000:]
	}
	return string(b)
}

func (s *stack) container(t *testing.T, id string, opts ...oci.SpecOpts) containerd.Container {
	t.Helper()
	s.ids = append(s.ids, id)
	c, err := s.client.NewContainer(s.ctx, id,
		containerd.WithNewSnapshot(id, s.image),
		containerd.WithNewSpec(append([]oci.SpecOpts{oci.WithImageConfig(s.image)}, opts...)...),
		containerd.WithRuntime("io.containerd.runsc.v1", &runtimeoptions.Options{TypeUrl: "io.containerd.runsc.v1.options", ConfigPath: s.runscConf}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (s *stack) create(t *testing.T, id string, creator cio.Creator, opts ...oci.SpecOpts) (containerd.Container, containerd.Task) {
	t.Helper()
	c := s.container(t, id, opts...)
	tk, err := c.NewTask(s.ctx, creator)
	if err != nil {
		c.Delete(s.ctx, containerd.WithSnapshotCleanup)
		t.Fatal(err)
	}
	return c, tk
}

// run starts the task and returns its exit status.
func (s *stack) run(t *testing.T, tk containerd.Task) uint32 {
	t.Helper()
	exit, err := tk.Wait(s.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Start(s.ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-exit:
		code, _, err := st.Result()
		if err != nil {
			t.Fatal(err)
		}
		return code
	case <-time.After(30 * time.Second):
		t.Fatal("task did not exit")
	}
	return 0
}

// waitGone waits (up to 2 s) until the processes have exited.
func (s *stack) waitGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		for deadline := time.Now().Add(2 * time.Second); !gone(pid) && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if !gone(pid) {
			t.Errorf("process %d still running", pid)
		}
	}
}

// noLoggerFiles checks that no logger FIFO or pid file is left anywhere in
// containerd's state (the bundles).
func (s *stack) noLoggerFiles(t *testing.T) {
	t.Helper()
	filepath.WalkDir(filepath.Join(s.dir, "state"), func(path string, d os.DirEntry, err error) error {
		if err == nil && slices.Contains([]string{loggerStdout, loggerStderr, loggerPidFile}, d.Name()) {
			t.Errorf("left behind: %s", path)
		}
		return nil
	})
}

// processes lists the pids of processes for which match(exe, cmdline) holds
// (cmdline with its NULs, framed by NULs).
func (s *stack) processes(match func(exe, cmdline string) bool) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || gone(pid) {
			continue
		}
		if match(exe, "\x00"+string(cmdline)) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// cleanup stops containerd and everything started under the test's dir (the
// shim, runsc, the loggers: all have the dir in their binary's path or their
// arguments), unmounts what is mounted there and removes its cgroups.
func (s *stack) cleanup(t *testing.T) {
	if s.client != nil {
		s.client.Close()
	}
	ours := func(exe, cmdline string) bool {
		return strings.HasPrefix(exe, s.dir+"/") || strings.Contains(cmdline, s.dir+"/") || strings.Contains(cmdline, s.dir+"\x00")
	}
	// containerd first, with SIGTERM so that it stops cleanly, then whatever
	// of ours is left.
	s.signal(t, func(exe, cmdline string) bool {
		return ours(exe, cmdline) && exe == filepath.Join(stackPrefix, "bin", "containerd")
	}, unix.SIGTERM)
	s.signal(t, ours, unix.SIGKILL)
	// Sockets of shims that did not shut down.
	for _, id := range s.ids {
		if addr, err := shim.SocketAddress(namespaces.WithNamespace(context.Background(), testNS), s.sock, id, false); err == nil {
			if os.Remove(strings.TrimPrefix(addr, "unix://")) == nil {
				t.Logf("cleanup: removed the socket of %s's shim", id)
			}
		}
	}
	// Mounts under the dir, deepest (last mounted) first.
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		var points []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], s.dir+"/") {
				points = append(points, fields[4])
			}
		}
		f.Close()
		for _, p := range slices.Backward(points) {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				t.Logf("cleanup: unmount %s: %v", p, err)
			}
		}
	}
	// runsc's cgroups for the namespace (empty once their processes are gone).
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + testNS)
	if top := "/sys/fs/cgroup/" + testNS; dirExists(top) {
		cgs = append(cgs, top)
	}
	for _, cg := range cgs {
		subs, _ := filepath.Glob(cg + "/*")
		for _, sub := range append(subs, cg) {
			if dirExists(sub) && unix.Rmdir(sub) == nil {
				t.Logf("cleanup: removed cgroup %s", sub)
			}
		}
	}
}

// signal sends sig to the processes that match and waits (up to 5 s) until
// they are gone.
func (s *stack) signal(t *testing.T, match func(exe, cmdline string) bool, sig unix.Signal) {
	for _, pid := range s.processes(match) {
		if sig == unix.SIGKILL {
			t.Logf("cleanup: killing leftover process %d", pid)
		}
		unix.Kill(pid, sig)
	}
	for deadline := time.Now().Add(5 * time.Second); len(s.processes(match)) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}
