package run

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/cio"
	"golang.org/x/sys/unix"
)

// A run without stdin or a terminal of moatc's (every detached run, and foreground runs
// without -i/-t) has its output owned by its shim: the task's stdout and stderr are a binary
// log URI, and the shim starts `moatc _log` (ServeLog) with the output's pipes, as it would any
// containerd logging binary. The workload keeps running and logging whatever happens to moatc
// processes; a foreground moatc prints the log as it grows. Interactive runs need moatc in the
// middle anyway (stdin, the terminal), so moatc records their output itself.

// LogCommand is the hidden command of the moatc binary the shim runs as the logger.
const LogCommand = "_log"

// logStatusName is the logger's report, next to the log: whether it has finished and what
// output it could not write. It is made at its full size before the run starts, so the
// logger can still write it when the disk is full.
const (
	logStatusName = "output.status"
	logStatusSize = 1024
)

type logStatus struct {
	Done      bool   `json:"done,omitempty"`
	Lost      int64  `json:"lost,omitempty"`
	LostLines int64  `json:"lost_lines,omitempty"`
	Error     string `json:"error,omitempty"`
}

// lostError says what output the logger could not write, or nil.
func (s logStatus) lostError() error {
	if s.Lost == 0 && s.Error == "" {
		return nil
	}
	return fmt.Errorf("%d bytes (%d lines) of output could not be written to the log: %s", s.Lost, s.LostLines, s.Error)
}

// prepareLog makes a run's log and the logger's status file, so that a disk too full for
// them stops the run before it starts.
func prepareLog(logPath string) error {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	sf, err := os.OpenFile(filepath.Join(filepath.Dir(logPath), logStatusName), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer sf.Close()
	// Written, not synced: the blocks are the file's once written (tmpfs, ext4's delayed
	// allocation reserves them), and a sync would cost every run's start a disk flush.
	return writeLogStatus(sf, logStatus{})
}

// writeLogStatus overwrites the status file in place, padded to its full size: the blocks it
// needs are already there.
func writeLogStatus(f *os.File, s logStatus) error {
	b, _ := json.Marshal(s)
	if len(b) > logStatusSize-1 {
		s.Error = s.Error[:max(0, len(s.Error)-(len(b)-logStatusSize+1))]
		b, _ = json.Marshal(s)
	}
	b = append(b, bytes.Repeat([]byte{' '}, logStatusSize-len(b))...)
	_, err := f.WriteAt(b, 0)
	return err
}

// readLogStatus reads run dir's logger status; ok is false when the run has none (its output
// was recorded by moatc, or it is older than the logger).
func readLogStatus(dir string) (s logStatus, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, logStatusName))
	if err != nil {
		return s, false
	}
	if json.Unmarshal(bytes.TrimSpace(b), &s) != nil {
		// Damaged: say nothing was lost rather than invent a loss, but do not wait for it.
		return logStatus{Done: true}, true
	}
	return s, true
}

// loggerArgs is what the logger needs, carried in the URI's one query value (the shim passes
// query keys in no fixed order, so there is one).
func loggerArgs(logPath string, max int64, tty bool) map[string]string {
	v := url.Values{"path": {logPath}, "max": {strconv.FormatInt(max, 10)}}
	if tty {
		v.Set("tty", "1")
	}
	return map[string]string{LogCommand: v.Encode()}
}

// logIO is the task IO of a run whose shim owns its output: nothing for moatc to copy.
type logIO struct{ cfg cio.Config }

func (l *logIO) Config() cio.Config { return l.cfg }
func (l *logIO) Cancel()            {}
func (l *logIO) Wait()              {}
func (l *logIO) Close() error       { return nil }

// shimLog returns the IO creator that has the shim start the moatc binary at exe as the
// run's logger.
func shimLog(exe, logPath string, max int64, tty bool) cio.Creator {
	return func(string) (cio.IO, error) {
		u, err := cio.LogURIGenerator("binary", exe, loggerArgs(logPath, max, tty))
		if err != nil {
			return nil, err
		}
		return &logIO{cfg: cio.Config{Terminal: tty, Stdout: u.String(), Stderr: u.String()}}, nil
	}
}

// ServeLog is the body of `moatc _log VALUE`, run by the shim: fd 3 is the task's stdout (or
// terminal), fd 4 its stderr, fd 5 says ready. It records both into the run's log until
// both end, then reports in the status file. Output it cannot write (a full disk) is read
// all the same, so the workload never blocks on its logger, and counted.
func ServeLog(value string) error {
	v, err := url.ParseQuery(value)
	if err != nil {
		return fmt.Errorf("logger arguments %q: %w", value, err)
	}
	path := v.Get("path")
	max, _ := strconv.ParseInt(v.Get("max"), 10, 64)
	// The shim sends SIGTERM once it has closed its ends of the pipes: what is still in them
	// is read to the end all the same.
	signal.Ignore(syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE)
	status, serr := os.OpenFile(filepath.Join(filepath.Dir(path), logStatusName), os.O_WRONLY, 0)
	rec, rerr := newRecorder(path, max)
	ready := os.NewFile(5, "ready")
	ready.Write([]byte{1})
	ready.Close()

	streams := []struct {
		f *os.File
		s byte
	}{{os.NewFile(3, "stdout"), streamStdout}, {os.NewFile(4, "stderr"), streamStderr}}
	if v.Get("tty") != "" {
		streams[0].s = streamTTY
	}
	var wg sync.WaitGroup
	var lost count
	var mu sync.Mutex
	for _, st := range streams {
		if st.f == nil {
			continue
		}
		// A bigger pipe: the workload blocks less often, and the logger reads and writes in
		// bigger records (fewer system calls and wake-ups for a lot of output).
		unix.FcntlInt(st.f.Fd(), unix.F_SETPIPE_SZ, 1<<20)
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 512<<10)
			for {
				n, err := gather(int(st.f.Fd()), buf)
				if n > 0 {
					if rec != nil {
						rec.write(st.s, buf[:n])
					} else {
						mu.Lock()
						lost.add(buf[:n])
						mu.Unlock()
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	s := logStatus{Done: true}
	switch {
	case rerr != nil:
		s.Lost, s.LostLines, s.Error = lost.bytes, lost.lines, fmt.Sprintf("opening the log: %v", rerr)
	default:
		rec.Close()
		rec.mu.Lock()
		if rec.lostAll.bytes > 0 || rec.err != nil {
			s.Lost, s.LostLines = rec.lostAll.bytes, rec.lostAll.lines
			s.Error = fmt.Sprint(rec.err)
		}
		rec.mu.Unlock()
	}
	if serr != nil {
		return fmt.Errorf("opening the logger's status: %w", serr)
	}
	defer status.Close()
	if err := writeLogStatus(status, s); err != nil {
		return fmt.Errorf("writing the logger's status: %w", err)
	}
	return nil
}

// bulk is a read big enough to be a stream of output rather than a line someone waits for.
const bulk = 16 << 10

// gather reads what fd has into buf: blocking for the first bytes, then, while output comes
// in bulk, what follows within a millisecond. A workload writing fast (or gVisor's shim,
// which copies in 32 KB pieces) then makes few big records instead of many small ones: fewer
// writes, and fewer wake-ups of whoever follows the log. A line of output goes out at once.
// It returns io.EOF once the writers are gone.
func gather(fd int, buf []byte) (int, error) {
	total := 0
	for {
		n, err := unix.Read(fd, buf[total:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			if total > 0 {
				return total, nil // EOF comes with the next call
			}
			return 0, io.EOF
		}
		total += n
		if total < bulk || len(buf)-total < bulk {
			return total, nil
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if k, err := unix.Poll(fds, 1); err != nil || k == 0 {
			return total, nil
		}
	}
}

// outputTail prints a run's log as it grows, for a foreground run whose shim owns the output.
type outputTail struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func tailOutput(logPath string, out, errw io.Writer) *outputTail {
	ctx, cancel := context.WithCancel(context.Background())
	t := &outputTail{cancel: cancel, done: make(chan struct{})}
	w := watchLog(filepath.Dir(logPath))
	go func() {
		defer close(t.done)
		defer w.Close()
		// prepareLog made the file, but a clean may race with a run that just ended.
		lr, err := openLog(logPath)
		for err != nil {
			if ctx.Err() != nil {
				return
			}
			w.wait(ctx)
			lr, err = openLog(logPath)
		}
		defer lr.Close()
		// A closed stdout (`| head -1`) stops the printing, never the run.
		p := newPrinter(out, errw, LogOptions{})
		for ctx.Err() == nil {
			if lr.drain(p) != nil {
				return // stdout closed, or the log unreadable: the run goes on all the same
			}
			w.wait(ctx)
		}
		lr.drain(p)
	}()
	return t
}

// finish prints what is left of the log, which is complete once the task is deleted, and
// stops. It gives up after a while on a logger that never finishes.
func (t *outputTail) finish() {
	if t == nil {
		return
	}
	t.cancel()
	select {
	case <-t.done:
	case <-time.After(30 * time.Second):
	}
}
