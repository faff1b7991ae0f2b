package run

import (
	"context"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// logWatch wakes a reader of a run's log when something in the run's directory changes
// (output written, a rotation), so following costs nothing while the run is quiet and
// output shows at once. Without inotify it polls.
type logWatch struct {
	f      *os.File // the inotify instance, nil when there is none
	events chan struct{}
}

// pollEvery bounds a wait: a run's record can change (its end) without a log write.
const pollEvery = 100 * time.Millisecond

func watchLog(dir string) *logWatch {
	w := &logWatch{events: make(chan struct{}, 1)}
	// Non-blocking, so the runtime's poller reads it and Close ends a pending read.
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return w
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MODIFY|unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_CLOSE_WRITE); err != nil {
		unix.Close(fd)
		return w
	}
	w.f = os.NewFile(uintptr(fd), "inotify")
	go w.read()
	return w
}

func (w *logWatch) read() {
	buf := make([]byte, 4096)
	for {
		if _, err := w.f.Read(buf); err != nil {
			return
		}
		select {
		case w.events <- struct{}{}:
		default:
		}
	}
}

// wait returns after the directory changed, or pollEvery, or when ctx ends (its error).
func (w *logWatch) wait(ctx context.Context) error {
	t := time.NewTimer(pollEvery)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-w.events:
	case <-t.C:
	}
	return nil
}

// Close stops the watch.
func (w *logWatch) Close() {
	if w != nil && w.f != nil {
		w.f.Close()
	}
}
