package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/run"
)

// startContainer starts a new task of c: its output recorded by the shim's logger, or, with
// stdin or a TTY, by the engine itself (the shim's logger takes no stdin, and gVisor's shim
// gives it no terminal). A task that cannot start leaves the container exited with the
// runtime's error (and removed, with AutoRemove).
func (e *Engine) startContainer(ctx context.Context, c *ctr) error {
	// A start goes to its end even when the client leaves: half a start is worse.
	ctx = context.WithoutCancel(ctx)
	e.mu.Lock()
	switch {
	case c.removing || c.removed:
		e.mu.Unlock()
		return conflict("container %s is being removed", c.rec.Name)
	case c.running():
		e.mu.Unlock()
		return errNotModified
	case c.starting:
		e.mu.Unlock()
		return conflict("container %s is already being started", c.rec.Name)
	case c.copying > 0:
		e.mu.Unlock()
		return conflict("container %s is being copied from or into (docker cp): start it when the copy is done", c.rec.Name)
	}
	c.starting = true
	cfg := c.rec.Config
	var stdinR *io.PipeReader
	if cfg.OpenStdin {
		if c.stdinR == nil {
			c.stdinR, c.stdin = io.Pipe()
		}
		stdinR = c.stdinR
	}
	ownIO := engineIO(cfg)
	e.mu.Unlock()
	done := func() {
		e.mu.Lock()
		c.starting = false
		e.mu.Unlock()
	}

	if err := e.ensureAttached(ctx, c.rec.ID); err != nil {
		done()
		return fmt.Errorf("starting container %s: %w", c.rec.Name, err)
	}
	cc, err := e.cfg.Client.LoadContainer(ctx, c.rec.ID)
	if err != nil {
		done()
		return fmt.Errorf("starting container %s: %w", c.rec.Name, err)
	}
	// A task an engine before this one left (it died before deleting it).
	if old, err := cc.Task(ctx, nil); err == nil {
		old.Delete(ctx, containerd.WithProcessKill)
	}
	log := e.log(c)
	var rec *run.LogRecorder
	var creator cio.Creator
	var task containerd.Task
	taskReady := make(chan struct{})
	if ownIO {
		if rec, err = log.Record(); err != nil {
			done()
			return err
		}
		out := "stdout"
		if cfg.Tty {
			out = "tty"
		}
		var stdin io.Reader
		if stdinR != nil {
			// At stdin's end the shim must be told to close the workload's stdin, or it
			// never sees the end.
			stdin = &stdinEOF{r: stdinR, atEOF: func() {
				<-taskReady
				if task != nil {
					task.CloseIO(e.bg, containerd.WithStdinCloser)
				}
			}}
		}
		opts := []cio.Opt{cio.WithStreams(stdin, rec.Stream(out), rec.Stream("stderr"))}
		if cfg.Tty {
			opts = append(opts, cio.WithTerminal)
		}
		creator = cio.NewCreator(opts...)
	} else {
		if err := log.Prepare(); err != nil {
			done()
			return fmt.Errorf("opening the container's log: %w", err)
		}
		creator = log.ShimIO(e.cfg.LoggerExe, cfg.Tty)
	}
	unpin, err := e.pinContainerMounts(c)
	if err != nil {
		close(taskReady)
		if rec != nil {
			rec.Close()
		}
		done()
		return err
	}
	task, err = cc.NewTask(ctx, creator)
	unpin()
	close(taskReady)
	var statusC <-chan containerd.ExitStatus
	if err == nil {
		if statusC, err = task.Wait(e.bg); err == nil {
			if h, w := c.rec.HostConfig.ConsoleSize[0], c.rec.HostConfig.ConsoleSize[1]; cfg.Tty && h > 0 && w > 0 {
				task.Resize(ctx, uint32(w), uint32(h))
			}
			err = task.Start(ctx)
		}
		if err != nil {
			task.Delete(e.bg, containerd.WithProcessKill)
		}
	}
	if err != nil {
		if rec != nil {
			rec.Close()
		}
		return e.startFailed(c, err)
	}
	e.mu.Lock()
	c.starting = false
	c.starts++
	c.task = task
	c.rec.State = state{Status: container.StateRunning, Pid: int(task.Pid()), StartedAt: time.Now().UTC(),
		RestartCount: c.rec.State.RestartCount, Health: newHealth(c.rec.Config)}
	c.watchDone = make(chan struct{})
	seq := c.starts
	serr := e.save(c)
	e.notify()
	rec0 := c.rec
	e.mu.Unlock()
	e.startedMounts(c)
	e.containerEvent(events.ActionStart, rec0, nil)
	if err := e.openPorts(rec0.ID); err != nil {
		fmt.Fprintf(os.Stderr, "moatc engine: warning: %v\n", err)
	}
	e.workers.Add(1)
	go e.watch(c, task, statusC, rec)
	if rec0.State.Health != nil {
		e.workers.Add(1) // while the watcher's count holds the group open
		go func() {
			defer e.workers.Done()
			e.healthLoop(c, cc, task, seq)
		}()
	}
	if serr != nil {
		// Followed all the same: the record is written again at the end.
		fmt.Fprintf(os.Stderr, "moatc engine: warning: %v\n", serr)
	}
	return nil
}

// startFailed records a start that failed: the container is exited with Docker's code for
// the cause (127: command not found, 126: cannot run it, 128 otherwise), and removed with
// AutoRemove. The error says what the runtime said; the CLI picks its exit code from it.
func (e *Engine) startFailed(c *ctr, err error) error {
	msg := err.Error()
	code, class := 128, error(errdefs.ErrUnknown)
	switch {
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file or directory"):
		code, class = 127, errdefs.ErrInvalidArgument
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "exec format error"):
		code, class = 126, errdefs.ErrInvalidArgument
	}
	now := time.Now().UTC()
	e.mu.Lock()
	c.starting = false
	c.rec.State = state{Status: container.StateExited, ExitCode: code, Error: msg, StartedAt: c.rec.State.StartedAt, FinishedAt: now}
	e.save(c)
	e.notify()
	autoRemove := c.rec.HostConfig.AutoRemove
	e.mu.Unlock()
	if autoRemove {
		e.removeWithVolumes(e.bg, c, true, true)
	}
	return classed(class, "failed to start container %s: %s", c.rec.Name, msg)
}

// engineIO says whether the engine holds a container's IO (and records its log itself).
func engineIO(cfg *container.Config) bool { return cfg.OpenStdin || cfg.Tty }

// stdinEOF calls atEOF once its reader ends.
type stdinEOF struct {
	r     io.Reader
	atEOF func()
	once  sync.Once
}

func (s *stdinEOF) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil {
		s.once.Do(func() { go s.atEOF() })
	}
	return n, err
}

// watch follows a started task to its end: the output is drained (or the shim's logger has
// finished: task delete returns after it), the end is recorded, waiters are woken, and an
// AutoRemove container is removed. When the engine closes first, the task is left running
// for the next engine to follow.
func (e *Engine) watch(c *ctr, task containerd.Task, statusC <-chan containerd.ExitStatus, rec *run.LogRecorder) {
	defer e.workers.Done()
	st := <-statusC
	for st.Error() != nil {
		if e.bg.Err() != nil {
			if rec != nil {
				rec.Close()
			}
			close(c.watchDone)
			return
		}
		// containerd went away (a restart): follow the task again once it answers.
		time.Sleep(250 * time.Millisecond)
		cc, err := e.cfg.Client.LoadContainer(e.bg, c.rec.ID)
		if err == nil {
			var t containerd.Task
			if t, err = cc.Task(e.bg, nil); err == nil {
				task = t
				var ch <-chan containerd.ExitStatus
				if ch, err = t.Wait(e.bg); err == nil {
					st = <-ch
					continue
				}
			}
		}
		if errdefs.IsNotFound(err) {
			st = *containerd.NewExitStatus(255, time.Now(), nil)
		}
	}
	// The end is real: it is recorded even while the engine closes.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(e.bg), 30*time.Second)
	defer cancel()
	if rec != nil && task.IO() != nil { // a task loaded again after containerd went away has no IO here
		drained := make(chan struct{})
		go func() { task.IO().Wait(); close(drained) }()
		select {
		case <-drained:
		case <-time.After(30 * time.Second):
		}
	}
	if rec != nil {
		rec.Close()
	}
	if _, err := task.Delete(ctx); err != nil && !errdefs.IsNotFound(err) {
		fmt.Fprintf(os.Stderr, "moatc engine: warning: deleting the task of %s: %v\n", c.rec.ID, err)
	}
	e.mu.Lock()
	c.task = nil
	if c.stdin != nil {
		c.stdin.Close()
		c.stdin, c.stdinR = nil, nil
	}
	if !c.removing && !c.removed {
		c.rec.State.Status = container.StateExited
		c.rec.State.Pid = 0
		c.rec.State.ExitCode = int(st.ExitCode())
		c.rec.State.FinishedAt = st.ExitTime().UTC()
		if c.rec.State.FinishedAt.IsZero() || c.rec.State.FinishedAt.Year() < 2000 {
			c.rec.State.FinishedAt = time.Now().UTC()
		}
		e.save(c)
	} else {
		c.rec.State.ExitCode = int(st.ExitCode())
	}
	c.exits = c.starts
	autoRemove := c.rec.HostConfig.AutoRemove && !c.removing && !c.removed
	e.notify()
	ended := c.rec
	e.mu.Unlock()
	e.closePorts(ended.ID)
	e.containerEvent(events.ActionDie, ended, map[string]string{"exitCode": strconv.Itoa(int(st.ExitCode()))})
	close(c.watchDone)
	e.maybeRestart(c, int(st.ExitCode()), ended.State.FinishedAt.Sub(ended.State.StartedAt))
	if autoRemove && e.bg.Err() == nil {
		if err := e.removeWithVolumes(e.bg, c, true, true); err != nil {
			fmt.Fprintf(os.Stderr, "moatc engine: warning: removing %s (AutoRemove): %v\n", c.rec.ID, err)
		}
	}
}

// removeContainer removes c: its task (killed, with force), its containerd container and
// snapshot, its directory. Waiters for "removed" are woken with its last exit code.
func (e *Engine) removeContainer(ctx context.Context, c *ctr, force bool) error {
	ctx = context.WithoutCancel(ctx) // never half done
	e.mu.Lock()
	switch {
	case c.removed:
		e.mu.Unlock()
		return notFound("No such container: %s", c.rec.ID)
	case c.removing:
		e.mu.Unlock()
		return conflict("removal of container %s is already in progress", c.rec.ID)
	case c.copying > 0:
		e.mu.Unlock()
		return conflict("container %s is being copied from or into (docker cp): remove it when the copy is done", c.rec.Name)
	case (c.running() || c.starting) && !force:
		e.mu.Unlock()
		return conflict("cannot remove container \"/%s\": container is running: stop the container before removing or force remove", c.rec.Name)
	}
	c.removing = true
	watchDone, task := c.watchDone, c.task
	e.mu.Unlock()
	if task != nil && watchDone != nil {
		// The watcher deletes the task once it has ended: a second delete at the same time
		// finds the shim gone.
		ctrd.KillAll(ctx, task)
		waitClosed(ctx, watchDone, 15*time.Second)
	}
	if _, err := e.cfg.Client.RemoveContainer(ctx, c.rec.ID); err != nil {
		e.mu.Lock()
		c.removing = false
		e.mu.Unlock()
		return err
	}
	if watchDone != nil {
		// The watcher records the end of the killed task: the exit code waiters get.
		select {
		case <-watchDone:
		case <-time.After(15 * time.Second):
		}
	}
	e.detachContainer(ctx, c.rec.ID)
	err := os.RemoveAll(c.dir)
	e.mu.Lock()
	c.removed = true
	delete(e.ctrs, c.rec.ID)
	e.notify()
	gone := c.rec
	e.mu.Unlock()
	e.execs.forget(c)
	e.containerEvent(events.ActionDestroy, gone, nil)
	if err != nil {
		return fmt.Errorf("removing the state of container %s: %w", c.rec.ID, err)
	}
	return nil
}

// stopContainer sends the container's stop signal, waits up to timeout for it to end, then
// kills it. A container not running is errNotModified, as with Docker.
func (e *Engine) stopContainer(ctx context.Context, c *ctr, sig syscall.Signal, timeout time.Duration) error {
	ctx = context.WithoutCancel(ctx) // as Docker's, a stop goes on when its client leaves
	e.mu.Lock()
	task, running := c.task, c.running()
	watchDone := c.watchDone
	e.mu.Unlock()
	if !running || task == nil {
		return errNotModified
	}
	if timeout != 0 {
		if err := task.Kill(ctx, sig); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("stopping container %s: %w", c.rec.Name, err)
		}
	}
	// A negative timeout waits for the end however long it takes, as Docker's -t -1.
	if waitClosed(ctx, watchDone, timeout) {
		return nil
	}
	if err := ctrd.KillAll(ctx, task); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("killing container %s: %w", c.rec.Name, err)
	}
	if !waitClosed(ctx, watchDone, 30*time.Second) {
		return errors.New("the container was killed but its end was not seen within 30s")
	}
	return nil
}

// waitClosed waits up to d (forever when negative) for ch to close.
func waitClosed(ctx context.Context, ch <-chan struct{}, d time.Duration) bool {
	if ch == nil {
		return true
	}
	var timeout <-chan time.Time
	if d >= 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-ch:
		return true
	case <-timeout:
		return false
	case <-ctx.Done():
		return false
	}
}
