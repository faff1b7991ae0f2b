package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/state"
)

// ExecOptions is a command to run in a running run's container, beside its workload.
type ExecOptions struct {
	Args    []string
	Env     []string // KEY=VALUE, over the run's own environment
	Workdir string   // default: the run's working directory
	User    string   // uid[:gid] or a name from the image's /etc/passwd; default: the run's user
	TTY     bool
}

// NotRunningError refuses work that needs a running run.
type NotRunningError struct {
	Ref   string
	State string
}

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("run %s is not running (it is %s): start one with `moatc run -d ...` or `moatc restart %s`", e.Ref, e.State, e.Ref)
}

// running finds a run whose task runs, and its task.
func (m *Manager) running(ctx context.Context, ref string) (*state.Run, containerd.Container, containerd.Task, error) {
	r, err := m.Store.Find(ref)
	if err != nil {
		return nil, nil, nil, err
	}
	if r.State != state.Running || r.Started == nil {
		return nil, nil, nil, &NotRunningError{Ref: ref, State: r.State}
	}
	c, err := m.Client(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	ctr, err := c.LoadContainer(ctx, r.ContainerID)
	if err == nil {
		var task containerd.Task
		if task, err = ctr.Task(ctx, nil); err == nil {
			return r, ctr, task, nil
		}
	}
	if errdefs.IsNotFound(err) {
		return nil, nil, nil, &NotRunningError{Ref: ref, State: state.Stopped}
	}
	return nil, nil, nil, fmt.Errorf("finding the task of run %s: %w", ref, err)
}

// Exec runs a command in run ref's container, with the workload's confinement (its
// capabilities, seccomp profile, user and limits: the process spec is the workload's own,
// with only the command, environment, directory, user and terminal changed). It returns the
// command's exit code. Its output is the caller's alone: it does not go into the run's log.
func (m *Manager) Exec(ctx context.Context, ref string, o ExecOptions, stdio Stdio) (int, error) {
	if len(o.Args) == 0 {
		return 0, fmt.Errorf("exec needs a command: moatc exec RUN -- CMD [ARG...]")
	}
	r, ctr, task, err := m.running(ctx, ref)
	if err != nil {
		return 0, err
	}
	pspec, err := m.execSpec(ctx, ctr, o)
	if err != nil {
		return 0, fmt.Errorf("exec in run %s: %w", r.Name, err)
	}
	bg := context.WithoutCancel(ctx)
	var proc containerd.Process
	ready := make(chan struct{})
	var stdin io.Reader
	if stdio.In != nil {
		// At EOF the shim must be told to close the command's stdin, or it never sees EOF.
		stdin = &stdinCloser{r: stdio.In, close: func() {
			<-ready
			if proc != nil {
				proc.CloseIO(bg, containerd.WithStdinCloser)
			}
		}}
	}
	opts := []cio.Opt{cio.WithStreams(stdin, orDiscard(stdio.Out), orDiscard(stdio.Err))}
	if o.TTY {
		opts = append(opts, cio.WithTerminal)
	}
	proc, err = task.Exec(ctx, execID(), pspec, cio.NewCreator(opts...))
	close(ready)
	if err != nil {
		return 0, fmt.Errorf("exec in run %s: %w", r.Name, err)
	}
	defer proc.Delete(bg, containerd.WithProcessKill)
	statusC, err := proc.Wait(bg)
	if err != nil {
		return 0, fmt.Errorf("exec in run %s: %w", r.Name, err)
	}
	if err := proc.Start(ctx); err != nil {
		return 0, execStartError(r.Name, err)
	}
	stop := m.forwardSignals(bg, proc, stdio.Console)
	defer stop()
	var st containerd.ExitStatus
	select {
	case st = <-statusC:
	case <-ctx.Done():
		proc.Kill(bg, 9)
		st = <-statusC
	}
	// The output is copied until the shim closes it; then the process can go.
	proc.IO().Wait()
	code, _, err := st.Result()
	if err != nil {
		return 0, fmt.Errorf("waiting for exec in run %s: %w", r.Name, err)
	}
	return int(code), nil
}

// execStartError gives a command that cannot start its exit code, as for a run: 127 not
// found, 126 not runnable (runc's and gVisor's wordings).
func execStartError(run string, err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "chdir") || strings.Contains(msg, "cwd"):
		// A missing working directory is not a missing command.
	case strings.Contains(msg, "error finding executable"), strings.Contains(msg, "executable file not found"),
		strings.Contains(msg, "no such file or directory"):
		return &ExitError{Code: 127, Err: fmt.Errorf("exec in run %s: the command is not found in the container: %w", run, err)}
	case strings.Contains(msg, "permission denied"), strings.Contains(msg, "exec format error"):
		return &ExitError{Code: 126, Err: fmt.Errorf("exec in run %s: the command cannot be run: %w", run, err)}
	}
	return fmt.Errorf("exec in run %s: %w", run, err)
}

// execSpec is the workload's process spec with the exec's command, env, directory and user.
func (m *Manager) execSpec(ctx context.Context, ctr containerd.Container, o ExecOptions) (*specs.Process, error) {
	c, err := m.Client(ctx)
	if err != nil {
		return nil, err
	}
	return ExecProcessSpec(ctx, c.Client, ctr, o)
}

// ExecProcessSpec is ctr's own process spec with o's command, env, directory, user and
// terminal: what an exec in it runs with (moatc exec, and the Docker engine's exec).
func ExecProcessSpec(ctx context.Context, client *containerd.Client, ctr containerd.Container, o ExecOptions) (*specs.Process, error) {
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return nil, err
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("the container has no process spec")
	}
	p := *spec.Process
	p.Args = slices.Clone(o.Args)
	p.Terminal = o.TTY
	p.ConsoleSize = nil
	p.Env = mergeEnv(p.Env, o.Env)
	if o.TTY && !slices.ContainsFunc(o.Env, func(kv string) bool { return strings.HasPrefix(kv, "TERM=") }) {
		// As docker exec -t: a terminal gets a TERM, unless the caller gave one.
		p.Env = mergeEnv(p.Env, []string{"TERM=xterm"})
	}
	if o.Workdir != "" {
		if !strings.HasPrefix(o.Workdir, "/") {
			return nil, fmt.Errorf("the working directory %q must be absolute, like /workspace/src", o.Workdir)
		}
		p.Cwd = o.Workdir
	}
	if o.User != "" {
		// containerd resolves a name against the container's own /etc/passwd and /etc/group
		// (its snapshot), never the host's.
		info, err := ctr.Info(ctx, containerd.WithoutRefreshedMetadata)
		if err != nil {
			return nil, err
		}
		tmp := *spec
		tmp.Process = &p
		p.User.AdditionalGids = nil
		if err := ctrd.WithUser(o.User)(ctx, client, &containers.Container{ID: info.ID, Snapshotter: info.Snapshotter, SnapshotKey: info.SnapshotKey}, &tmp); err != nil {
			return nil, fmt.Errorf("user %q: %w", o.User, err)
		}
	}
	return &p, nil
}

// mergeEnv sets each KEY=VALUE of add over base.
func mergeEnv(base, add []string) []string {
	out := slices.Clone(base)
	for _, kv := range add {
		k, _, _ := strings.Cut(kv, "=")
		out = slices.DeleteFunc(out, func(e string) bool { return strings.HasPrefix(e, k+"=") || e == k })
		out = append(out, kv)
	}
	return out
}

func execID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "exec-" + hex.EncodeToString(b)
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}
