package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v2"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// Binary log URIs (binary:///path/to/logger?key=value), as containerd's runc
// shim serves them (cmd/containerd-shim-runc-v2/process/io.go NewBinaryIO and
// runc/platform.go CopyConsole): the shim starts the logger with the
// container's stdout on fd 3, its stderr on fd 4 and a "ready" pipe on fd 5,
// and creates the container once the logger has written a byte to fd 5 or
// closed it (a logger that exits instead, which the runc shim takes for
// ready, fails the Create here). gVisor's shim takes Stdout and Stderr as
// FIFO or file paths only, so the shim gives gVisor two FIFOs in the bundle
// instead, and the logger their read ends: gVisor's copy goroutines (or its
// console copy, for a TTY) write into them, and close them when the
// container's output ends, which is the logger's EOF.

// Files of a task with a binary logger, in its bundle.
const (
	loggerStdout  = "logger-stdout" // FIFO: the container's stdout, the logger's fd 3
	loggerStderr  = "logger-stderr" // FIFO: the container's stderr, the logger's fd 4
	loggerPidFile = "logger.pid"    // "PID STARTTIME" of the logger, for the delete command
)

// Variables, not constants, only so that tests can shorten them.
var (
	// loggerExitWait bounds the wait, from the start of the task's Delete, for
	// the logger to exit on its own (after EOF on fds 3 and 4, once it has
	// flushed). containerd's runc shim gives it 12 s after SIGTERM.
	loggerExitWait = 10 * time.Second
	// loggerSignalWait is how long a logger is given after SIGTERM, then after
	// SIGKILL.
	loggerSignalWait = 2 * time.Second
	// loggerOrphanWait is how long the delete command gives a logger it finds
	// still running, before each signal: it runs under containerd's 5 s
	// clean-up timeout, and the logger has had EOF since its shim died.
	loggerOrphanWait = time.Second
)

// pfExiting is PF_EXITING in the flags of /proc/PID/stat: set when a process
// starts to exit, before its files are closed.
const pfExiting = 0x4

// binaryLogger is the logger process of one task's init.
type binaryLogger struct {
	id, bundle     string
	stdout, stderr string // the request's own Stdout and Stderr, reported by State
	path           string // the logger binary
	cmd            *exec.Cmd

	exited chan struct{} // closed once the reaper has reported the logger's exit
	status int           // the logger's exit status, set before exited is closed

	// out and errOut are the shim's own read ends of the FIFOs, drained once
	// the logger is gone so that gVisor's copy goroutines (which also hold a
	// read end, and so never get EPIPE) cannot block the task's Delete on a
	// full FIFO.
	out, errOut *os.File
	// holds are write ends of the FIFOs held until gVisor has opened its own:
	// a FIFO with no writer reads as EOF, and the logger runs before gVisor
	// opens them.
	holds []*os.File
	diag  *stderrTail
}

// binaryLogURI parses s as a binary log URI: "binary", or "binary-v2" (newer
// containerd, e.g. 2.4; not in 2.1), whose logger must write a byte to fd 5.
func binaryLogURI(s string) (*url.URL, bool) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, false
	}
	return u, u.Scheme == "binary" || u.Scheme == "binary-v2"
}

// binaryCmd is the logger's command, as containerd's NewBinaryCmd builds it:
// each query key followed by its (first) value, also when the value is empty,
// and an environment of CONTAINER_ID and CONTAINER_NAMESPACE only (containerd
// sets cmd.Env from nil, so the shim's own environment is not passed). Keys
// are sorted (containerd's order is a map's, so no logger relies on one). The
// logger gets its own process group, so that a logger that has to be killed
// takes its children with it.
func binaryCmd(u *url.URL, id, ns string) *exec.Cmd {
	q := u.Query()
	var args []string
	for _, k := range slices.Sorted(maps.Keys(q)) {
		args = append(args, k)
		if vs := q[k]; len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + ns}
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	return cmd
}

// startBinaryLogger starts the logger of r when r.Stdout is a binary log URI
// (the runc shim then ignores r.Stderr too), waits until it is ready, and
// points r.Stdout and r.Stderr at the FIFOs it reads. It returns nil for any
// other stdio. On error nothing is left: no process, no FIFO.
func startBinaryLogger(ctx context.Context, r *task.CreateTaskRequest) (_ *binaryLogger, retErr error) {
	u, ok := binaryLogURI(r.Stdout)
	if !ok {
		return nil, nil
	}
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	l := &binaryLogger{
		id: r.ID, bundle: r.Bundle, stdout: r.Stdout, stderr: r.Stderr, path: u.Path,
		exited: make(chan struct{}), diag: &stderrTail{done: make(chan struct{})},
	}
	var closers []io.Closer // the shim's copies of the logger's fds
	defer func() {
		for _, c := range closers {
			c.Close()
		}
		if retErr != nil {
			l.abort()
		}
	}()

	for _, f := range []struct {
		name string
		read **os.File
	}{{loggerStdout, &l.out}, {loggerStderr, &l.errOut}} {
		rd, wr, err := openFifo(filepath.Join(r.Bundle, f.name))
		if err != nil {
			return nil, err
		}
		*f.read = rd
		l.holds = append(l.holds, wr)
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyR.Close()
	diagR, diagW, err := os.Pipe()
	if err != nil {
		readyW.Close()
		return nil, err
	}
	closers = append(closers, readyW, diagW)

	l.cmd = binaryCmd(u, r.ID, ns)
	l.cmd.ExtraFiles = []*os.File{l.out, l.errOut, readyW} // fds 3, 4, 5
	l.cmd.Stderr = diagW
	// The shim is a subreaper whose reaper reaps every child: the exit comes
	// from the reaper, never from cmd.Wait.
	ec, err := reaper.Default.Start(l.cmd)
	if err != nil {
		diagR.Close()
		return nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	go func() {
		status, err := reaper.Default.Wait(l.cmd, ec)
		if err != nil {
			status = -1
		}
		l.status = status
		close(l.exited)
		l.drain()
	}()
	go l.diag.read(diagR, r.ID)
	for _, c := range closers {
		c.Close()
	}
	closers = nil
	l.writePid()

	// Wait until the logger is ready: a byte on fd 5, or EOF.
	type result struct {
		n   int
		err error
	}
	ready := make(chan result, 1)
	go func() {
		b := make([]byte, 1)
		n, err := readyR.Read(b)
		ready <- result{n, err}
	}()
	var res result
	select {
	case res = <-ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for logging binary %s: %w", u.Path, ctx.Err())
	}
	switch {
	case res.err != nil && res.err != io.EOF:
		return nil, fmt.Errorf("read from logging binary %s: %w", u.Path, res.err)
	case res.n == 1:
	case l.dead():
		// EOF because it exited (or is exiting): a crash, not a ready logger.
		return nil, l.exitError()
	case u.Scheme == "binary-v2":
		return nil, fmt.Errorf("logging binary %s did not call ready (it may have crashed or exited prematurely)", u.Path)
	}

	r.Stdout = filepath.Join(r.Bundle, loggerStdout)
	r.Stderr = filepath.Join(r.Bundle, loggerStderr)
	log.G(ctx).WithField("id", r.ID).Debugf("runsc shim: logging binary %s (pid %d) ready", u.Path, l.cmd.Process.Pid)
	return l, nil
}

// openFifo makes a FIFO at path and opens its read end (blocking, for the
// logger) and a write end (so that the logger sees no EOF yet).
func openFifo(path string) (rd, wr *os.File, err error) {
	_ = os.Remove(path) // from an earlier task in a reused bundle
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, nil, fmt.Errorf("make logger FIFO: %w", err)
	}
	rfd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(path)
		return nil, nil, fmt.Errorf("open logger FIFO: %w", err)
	}
	wfd, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err == nil {
		err = unix.SetNonblock(rfd, false)
	}
	if err != nil {
		unix.Close(rfd)
		if wfd >= 0 {
			unix.Close(wfd)
		}
		os.Remove(path)
		return nil, nil, fmt.Errorf("open logger FIFO: %w", err)
	}
	return os.NewFile(uintptr(rfd), path), os.NewFile(uintptr(wfd), path), nil
}

// created is called when the inner Create has returned: gVisor has opened
// the FIFOs (or never will), so the shim's write ends go. A failed Create
// ends the logger and removes its files.
func (l *binaryLogger) created(ok bool) {
	l.release()
	if !ok {
		l.end(time.Now().Add(loggerSignalWait), nil)
		l.remove()
	}
}

func (l *binaryLogger) release() {
	for _, f := range l.holds {
		f.Close()
	}
	l.holds = nil
}

// deleting is called as the task's init is deleted. The logger gets until
// loggerExitWait from now to exit on its own, then SIGTERM, then SIGKILL; the
// bound also covers the inner Delete, which a logger that stopped reading can
// block (gVisor's copy goroutine waits on a full FIFO, and the Delete waits
// for it). The returned function takes the inner Delete's outcome: after a
// successful Delete it returns once the logger has exited (its log complete)
// and its files are gone; after a failed one the logger is left running.
func (l *binaryLogger) deleting() func(deleted bool) {
	deadline := time.Now().Add(loggerExitWait)
	abort, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		l.end(deadline, abort)
	}()
	return func(deleted bool) {
		if !deleted {
			close(abort)
			return
		}
		<-done
		l.remove()
	}
}

// end waits for the logger to exit until deadline, then sends SIGTERM (what
// containerd sends: containerd's logging library cancels its context), then
// SIGKILL, to its process group. The runc shim sends SIGTERM as soon as the
// output is closed; waiting first means a logger that exits on EOF is never
// cut off while it flushes. It returns early, sending nothing, when abort is
// closed before the deadline.
func (l *binaryLogger) end(deadline time.Time, abort <-chan struct{}) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-l.exited:
		l.logExit()
		return
	case <-abort:
		return
	case <-t.C:
	}
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGKILL} {
		log.L.WithField("id", l.id).Warnf("runsc shim: logging binary %s (pid %d) still running; sending %s", l.path, l.cmd.Process.Pid, unix.SignalName(sig))
		l.signal(sig)
		select {
		case <-l.exited:
			l.logExit()
			return
		case <-time.After(loggerSignalWait):
		}
	}
	log.L.WithField("id", l.id).Errorf("runsc shim: logging binary %s (pid %d) did not exit after SIGKILL", l.path, l.cmd.Process.Pid)
}

func (l *binaryLogger) logExit() {
	if l.status != 0 {
		log.L.WithField("id", l.id).Warnf("runsc shim: logging binary %s exited with status %d%s", l.path, l.status, l.diag.suffix())
	}
}

// signal signals the logger's process group while the logger (the group's
// leader, whose pid is the group's id) has not been reaped.
func (l *binaryLogger) signal(sig unix.Signal) {
	select {
	case <-l.exited:
	default:
		if err := unix.Kill(-l.cmd.Process.Pid, sig); err != nil && err != unix.ESRCH {
			log.L.WithError(err).Warnf("runsc shim: signal logging binary %s", l.path)
		}
	}
}

// abort undoes a start that failed: the logger (and its group) is killed,
// its files removed.
func (l *binaryLogger) abort() {
	l.release()
	if l.cmd != nil && l.cmd.Process != nil {
		_ = unix.Kill(-l.cmd.Process.Pid, unix.SIGKILL)
		select {
		case <-l.exited:
		case <-time.After(loggerSignalWait):
			log.L.WithField("id", l.id).Errorf("runsc shim: logging binary %s (pid %d) did not exit after SIGKILL", l.path, l.cmd.Process.Pid)
		}
	} else {
		// Never started: nobody drains the read ends.
		l.out.Close()
		l.errOut.Close()
	}
	l.remove()
}

// remove removes the logger's files from the bundle.
func (l *binaryLogger) remove() {
	removeLoggerFiles(l.bundle)
}

func removeLoggerFiles(bundle string) {
	for _, name := range []string{loggerStdout, loggerStderr, loggerPidFile} {
		if err := os.Remove(filepath.Join(bundle, name)); err != nil && !os.IsNotExist(err) {
			log.L.WithError(err).Warn("runsc shim: remove logger file")
		}
	}
}

// drain reads whatever is still written to the FIFOs once the logger is gone
// (dead, or ended by the shim). A logger's children that read on after it
// exited would lose output to it; loggers wait for their copies to end.
func (l *binaryLogger) drain() {
	for _, f := range []*os.File{l.out, l.errOut} {
		if f == nil {
			continue
		}
		go func() {
			n, _ := io.Copy(io.Discard, f)
			f.Close()
			if n > 0 {
				log.L.WithField("id", l.id).Warnf("runsc shim: %d bytes of output discarded: logging binary %s had exited", n, l.path)
			}
		}()
	}
}

// dead reports whether the logger has exited or is exiting.
func (l *binaryLogger) dead() bool {
	select {
	case <-l.exited:
		return true
	default:
	}
	st, err := readProcStat(l.cmd.Process.Pid)
	return err != nil || st.state == 'Z' || st.state == 'X' || st.state == 'x' || st.flags&pfExiting != 0
}

// exitError describes a logger that exited before it was ready.
func (l *binaryLogger) exitError() error {
	select {
	case <-l.exited:
	case <-time.After(loggerSignalWait):
		return fmt.Errorf("logging binary %s exited before it was ready", l.path)
	}
	return fmt.Errorf("logging binary %s exited with status %d before it was ready%s", l.path, l.status, l.diag.suffix())
}

// writePid records the logger for the delete command (cleanLoggerFiles).
func (l *binaryLogger) writePid() {
	pid := l.cmd.Process.Pid
	st, err := readProcStat(pid)
	if err != nil {
		return // already gone
	}
	data := fmt.Sprintf("%d %d\n", pid, st.start)
	if err := os.WriteFile(filepath.Join(l.bundle, loggerPidFile), []byte(data), 0o644); err != nil {
		log.L.WithError(err).Warn("runsc shim: write logger pid")
	}
}

// cleanLoggerFiles is the delete command's part (manager.Stop, in the bundle
// dir): after a task's Delete nothing is left, but when the shim died, its
// logger may still run (it got EOF when the shim died, so normally it has
// exited) and its FIFOs are left. The logger, if still running, is given
// loggerOrphanWait, then SIGTERM, then SIGKILL.
func cleanLoggerFiles(bundle string) {
	defer removeLoggerFiles(bundle)
	b, err := os.ReadFile(filepath.Join(bundle, loggerPidFile))
	if err != nil {
		return
	}
	var pid int
	var start uint64
	if _, err := fmt.Sscanf(string(b), "%d %d", &pid, &start); err != nil || pid <= 0 {
		return
	}
	// Not this process's child: it is known by pid and start time.
	running := func() bool {
		st, err := readProcStat(pid)
		return err == nil && st.start == start && st.state != 'Z' && st.state != 'X' && st.state != 'x'
	}
	for _, sig := range []unix.Signal{0, unix.SIGTERM, unix.SIGKILL} {
		if sig != 0 && running() {
			log.L.Warnf("runsc shim: logging binary (pid %d) of a deleted task still running; sending %s", pid, unix.SignalName(sig))
			_ = unix.Kill(-pid, sig)
		}
		for deadline := time.Now().Add(loggerOrphanWait); running() && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if !running() {
			return
		}
	}
}

type procStat struct {
	state byte
	flags uint64
	start uint64 // clock ticks after boot
}

// readProcStat reads the state, flags and start time of process pid.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// "pid (comm) state ppid pgrp session tty_nr tpgid flags ... starttime":
	// comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed stat")
	}
	flags, err1 := strconv.ParseUint(f[6], 10, 64)
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procStat{}, errors.New("malformed stat")
	}
	return procStat{state: f[0][0], flags: flags, start: start}, nil
}

// stderrTail copies the logger's stderr (containerd's runc shim discards it)
// to the shim log, and keeps its end for error messages.
type stderrTail struct {
	mu   sync.Mutex
	tail []byte
	done chan struct{} // closed at EOF
}

const stderrTailMax = 1024

func (s *stderrTail) read(r *os.File, id string) {
	defer close(s.done)
	defer r.Close()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			s.mu.Lock()
			s.tail = append(s.tail, buf[:n]...)
			if len(s.tail) > stderrTailMax {
				s.tail = s.tail[len(s.tail)-stderrTailMax:]
			}
			s.mu.Unlock()
			log.L.WithField("id", id).Warnf("runsc shim: logging binary: %s", strings.TrimRight(string(buf[:n]), "\n"))
		}
		if err != nil {
			return
		}
	}
}

// suffix is ": <the end of the logger's stderr>", or "" when it wrote none.
// It waits briefly for the output of a logger that has just exited.
func (s *stderrTail) suffix() string {
	select {
	case <-s.done:
	case <-time.After(200 * time.Millisecond):
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := strings.TrimSpace(strings.ToValidUTF8(string(s.tail), "?"))
	if t == "" {
		return ""
	}
	return ": " + t
}
