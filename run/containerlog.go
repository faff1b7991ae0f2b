package run

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/cio"
)

// ContainerLog is a log in a run's format (see log.go) kept for a container that is not a
// run: the containers of moatc's Docker Engine API (package engine) record their output this
// way, with the same logger, rotation and reader as runs.
type ContainerLog struct {
	Path string // the log file; the logger's status file goes next to it
	Max  int64  // the cap on the log files; 0 is DefaultLogMax
}

// Prepare makes the log and the logger's status file (saying "not done") before a task whose
// shim owns the output starts; see prepareLog.
func (l ContainerLog) Prepare() error { return prepareLog(l.Path) }

// ShimIO is the task IO that has the shim run the moatc binary at exe as the log's writer,
// so the output is recorded whatever happens to the process that started the task.
func (l ContainerLog) ShimIO(exe string, tty bool) cio.Creator {
	return shimLog(exe, l.Path, l.Max, tty)
}

// LoggerDone reports whether the shim's logger has finished writing (it does once the task
// is deleted), and the output it could not write, if any.
func (l ContainerLog) LoggerDone() (bool, error) {
	st, ok := readLogStatus(filepath.Dir(l.Path))
	if !ok {
		return true, nil
	}
	return st.Done, st.lostError()
}

// LogRecorder writes a log from moatc itself, for a task whose IO moatc holds (one with stdin).
type LogRecorder struct{ r *recorder }

// Record opens the log for moatc to write.
func (l ContainerLog) Record() (*LogRecorder, error) {
	r, err := newRecorder(l.Path, l.Max)
	if err != nil {
		return nil, fmt.Errorf("opening the container's log: %w", err)
	}
	return &LogRecorder{r: r}, nil
}

// Stream is a writer of one stream's output: "stdout", "stderr", or "tty" for a terminal's.
func (r *LogRecorder) Stream(name string) io.Writer { return r.r.stream(name) }

// Close ends the log; its error says what output could not be written.
func (r *LogRecorder) Close() error { return r.r.Close() }

// ReadOptions select what ContainerLog.Read prints: as for a run's log.
type ReadOptions = LogOptions

// Read prints the log as Logs prints a run's: stdout (or a terminal's output) to out, stderr
// to errw, moatc's notes as "moatc: ..." lines to errw. A missing log is empty. With Follow it
// goes on until ctx ends or ended reports, while the log is idle, that nothing more will be
// written; what is left is then printed.
func (l ContainerLog) Read(ctx context.Context, o ReadOptions, out, errw io.Writer, ended func() bool) error {
	var w *logWatch
	if o.Follow {
		// Before the first read, so no write between the read and the wait is missed.
		w = watchLog(filepath.Dir(l.Path))
		defer w.Close()
	}
	var lr *logReader
	for {
		var err error
		lr, err = openLog(l.Path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if !o.Follow || ended() {
			return nil
		}
		if err := w.wait(ctx); err != nil {
			return err
		}
	}
	defer lr.Close()
	p := newPrinter(out, errw, o)
	return lr.follow(ctx, w, p, o, func() (bool, error) { return !ended(), nil })
}
