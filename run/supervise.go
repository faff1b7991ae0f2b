package run

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// detach hands run r to a `moatc _supervise` process of its own session, which owns the task's
// IO and records its end, and returns once the task runs (or with why it could not start).
func (m *Manager) detach(r *state.Run) error {
	argv := m.SuperviseCommand(r.ID)
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	logf, err := os.OpenFile(filepath.Join(m.Store.Dir(r.ID), "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		pw.Close()
		return err
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3: the readiness pipe
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		pw.Close()
		err = fmt.Errorf("starting the run's supervisor: %w", err)
		m.fail(r.ID, err, nil)
		return err
	}
	pw.Close()
	line, _ := bufio.NewReader(pr).ReadString('\n')
	cmd.Process.Release()
	line = strings.TrimSpace(line)
	switch {
	case line == "ok":
		return nil
	case strings.HasPrefix(line, "err "):
		code, msg, _ := strings.Cut(strings.TrimPrefix(line, "err "), " ")
		err := errors.New(msg)
		if n, _ := strconv.Atoi(code); n != 0 {
			return &ExitError{Code: n, Err: err}
		}
		return err
	}
	return fmt.Errorf("the run's supervisor exited before the run started; see %s", logf.Name())
}

// Supervise runs the detached run id to its end: the body of `moatc _supervise`. ready is the
// pipe to the moatc that detached it.
func (m *Manager) Supervise(ctx context.Context, id string, ready *os.File) error {
	r, err := m.Store.Update(id, func(r *state.Run) error {
		r.Supervisor = state.Self()
		return nil
	})
	report := func(err error) {
		if ready == nil {
			return
		}
		if err == nil {
			fmt.Fprintln(ready, "ok")
		} else {
			code := 0
			if c := exitCodeOf(err); c != nil {
				code = *c
			}
			fmt.Fprintf(ready, "err %d %s\n", code, strings.ReplaceAll(err.Error(), "\n", " "))
		}
		ready.Close()
		ready = nil
	}
	if err != nil {
		report(err)
		return err
	}
	c, err := m.Client(ctx)
	if err == nil {
		img, ierr := c.Image(ctx, r.Spec.Image, snapshot.Default())
		if ierr == nil {
			_, err = m.execute(ctx, r, img, Stdio{}, report)
			report(err)
			return err
		}
		err = ierr
	}
	m.fail(id, err, nil)
	report(err)
	return err
}
