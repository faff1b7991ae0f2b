package run

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"

	"github.com/moatc/moatc/state"
)

// A detached run outlives its supervisor: when `moatc _supervise` dies (killed -9, out of
// memory) while the task runs, the next moatc command hands the run to a new supervisor. The
// output never stopped (the shim's logger writes it: see logger.go); the new supervisor serves
// the run's proxy again on the same port with the same secret, and records the real end. A foreground run is not adopted: its person is gone with
// the moatc they killed, and it is stopped as before.

// adoptable reports whether run r, whose supervisor is gone, may get a new one.
func (m *Manager) adoptable(r *state.Run) bool {
	return r.Spec.Detach && r.Started != nil && (r.State == state.Running || r.State == state.Stopping) && m.SuperviseCommand != nil
}

// adopt starts a new supervisor for r when its task still runs, and names it in r (the
// caller holds r's record lock and writes r). It reports whether it did; an error means it
// cannot tell whether the task runs (containerd or the shim does not answer), and nothing
// may be removed yet.
func (m *Manager) adopt(ctx context.Context, r *state.Run) (bool, error) {
	c, err := m.Client(ctx)
	if err != nil {
		return false, err
	}
	ctr, err := c.LoadContainer(ctx, r.ContainerID)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	st, err := task.Status(ctx)
	if err != nil {
		return false, fmt.Errorf("asking the state of the run's task: %w", err)
	}
	if st.Status != containerd.Running {
		return false, nil
	}
	argv := m.SuperviseCommand(r.ID)
	argv = append(append(argv[:len(argv)-1:len(argv)-1], "--adopt"), r.ID)
	logf, err := os.OpenFile(filepath.Join(m.Store.Dir(r.ID), "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return false, fmt.Errorf("starting a new supervisor: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return false, fmt.Errorf("starting a new supervisor: %w", err)
	}
	p, err := state.ProcessOf(cmd.Process.Pid)
	cmd.Process.Release()
	if err != nil {
		return false, fmt.Errorf("starting a new supervisor: %w", err)
	}
	r.Supervisor = p
	fmt.Fprintf(os.Stderr, "moatc: run %s lost its supervisor; a new one (pid %d) follows it\n", r.Name, p.Pid)
	return true, nil
}

// Adopt supervises detached run id after its first supervisor died: the body of
// `moatc _supervise --adopt`.
func (m *Manager) Adopt(ctx context.Context, id string) error {
	bg := context.WithoutCancel(ctx)
	r, err := m.Store.Update(id, func(r *state.Run) error {
		r.Supervisor = state.Self()
		return nil
	})
	if err != nil {
		return err
	}
	c, err := m.Client(ctx)
	if err != nil {
		return err
	}
	ctr, err := c.LoadContainer(ctx, r.ContainerID)
	if err != nil {
		return m.lose(bg, r, fmt.Errorf("loading the run's container: %w", err))
	}
	o := &runOutput{}
	var task containerd.Task
	if r.Output == "shim" {
		// The shim's logger has kept recording all along: nothing to attach to.
		task, err = ctr.Task(ctx, nil)
	} else {
		if o.rec, err = newRecorder(m.Store.LogPath(r.ID), r.Spec.LogMax); err != nil {
			return m.lose(bg, r, fmt.Errorf("opening the run's log: %w", err))
		}
		task, err = ctr.Task(ctx, cio.NewAttach(cio.WithStreams(nil, o.rec.stream("stdout"), o.rec.stream("stderr"))))
	}
	if err != nil {
		o.abort()
		return m.lose(bg, r, fmt.Errorf("attaching to the run's output: %w", err))
	}
	if r.Spec.Network != "none" {
		eg, err := m.reserve(bg, r, ctr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: the proxy of run %s could not be served again (%v): its HTTP(S) requests fail\n", r.Name, err)
		}
		defer eg.close()
	}
	if r.Spec.Docker != "" {
		// The engine died with the supervisor: served again here, it takes its containers over.
		e, err := m.startEngine(bg, r, r.Spec.Network != "none", false)
		if err != nil {
			fmt.Fprintf(os.Stderr, "moatc: warning: the Docker engine of run %s could not be served again: %v\n", r.Name, err)
		} else {
			defer e.end(bg)
		}
	}
	statusC, err := task.Wait(bg)
	if err != nil {
		o.abort()
		return m.lose(bg, r, fmt.Errorf("waiting on the run's task: %w", err))
	}
	_, _, err = m.follow(bg, r, task, statusC, nil, o, nil)
	return err
}

// lose stops a run that cannot be supervised and records why.
func (m *Manager) lose(ctx context.Context, r *state.Run, why error) error {
	if c, err := m.Client(ctx); err == nil {
		c.RemoveContainer(ctx, r.ContainerID)
	}
	m.Net.Teardown(ctx, r.ID)
	m.fail(r.ID, why, nil)
	return why
}

// reserve serves an adopted run's proxy again: the same port on its gateway and the same
// secret, both read back from the container's environment (HTTP_PROXY), since the workload
// already holds them.
func (m *Manager) reserve(ctx context.Context, r *state.Run, ctr containerd.Container) (*egress, error) {
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return nil, err
	}
	var proxyURL string
	for _, kv := range spec.Process.Env {
		if v, ok := strings.CutPrefix(kv, "HTTP_PROXY="); ok {
			proxyURL = v
		}
	}
	u, err := url.Parse(proxyURL)
	if err != nil || u.User == nil {
		return nil, fmt.Errorf("the container has no proxy address")
	}
	secret, _ := u.User.Password()
	ap, err := netip.ParseAddrPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("the container's proxy address %q: %w", u.Host, err)
	}
	nw, err := m.Net.Load(r.ID)
	if err != nil {
		return nil, err
	}
	eg, err := m.newEgress(r)
	if err != nil {
		return nil, err
	}
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return nil, fmt.Errorf("binding the run's proxy on %s again: %w", ap, err)
	}
	eg.secret, eg.ln, eg.port = secret, ln, ap.Port()
	if err := eg.start(ctx, nw); err != nil {
		eg.close()
		return nil, err
	}
	return eg, nil
}
