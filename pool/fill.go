package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/internal/lockfile"
	"github.com/moatc/moatc/state"
)

// sandboxHostname is a pool sandbox's hostname until a run takes it and sets its own.
const sandboxHostname = "moatc-pool"

func (p *Pool) fillLockPath() string  { return filepath.Join(p.Dir, "fill.lock") }
func (p *Pool) fillerPath() string    { return filepath.Join(p.Dir, "filler.json") }
func (p *Pool) fillErrorPath() string { return filepath.Join(p.Dir, "fill.error") }

// FillError is why the last fill failed, or "" when it did not: runs that then find no
// member say so as they start cold.
func (p *Pool) FillError() string {
	b, err := os.ReadFile(p.fillErrorPath())
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Want is how many members the pool keeps in all.
func (p *Pool) Want() int {
	n := 0
	for _, s := range p.Sizes {
		n += s.N
	}
	return n
}

// Fill makes members until each class has its size, after removing the members that are
// broken or whose process died. One fill runs at a time in a home; another waits for it.
// progress, if set, hears of each member made. On failure (out of memory, disk or
// addresses) what was made stays and the error says what failed.
func (p *Pool) Fill(ctx context.Context, progress func(*Member)) (made int, err error) {
	made, err = p.fill(ctx, progress)
	switch {
	case err != nil && ctx.Err() == nil:
		atomicfile.WriteNoSync(p.fillErrorPath(), []byte(err.Error()+"\n"), 0o600)
	case err == nil:
		os.Remove(p.fillErrorPath())
	}
	return made, err
}

func (p *Pool) fill(ctx context.Context, progress func(*Member)) (made int, err error) {
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return 0, fmt.Errorf("filling the pool: %w", err)
	}
	release, err := lockfile.Flock(p.fillLockPath(), unix.LOCK_EX)
	if err != nil {
		return 0, err
	}
	defer release()
	// Drain finds the filler here, to stop it.
	if b, err := json.Marshal(state.Self()); err == nil {
		atomicfile.WriteNoSync(p.fillerPath(), b, 0o600)
	}
	defer os.Remove(p.fillerPath())
	if err := p.prune(ctx); err != nil {
		return 0, err
	}
	for _, sz := range p.Sizes {
		for {
			have, err := p.count(sz.Class)
			if err != nil {
				return made, err
			}
			if have >= sz.N || ctx.Err() != nil {
				break
			}
			m, err := p.make(ctx, sz.Class)
			if err != nil {
				return made, fmt.Errorf("filling the pool (%s): %w", sz.Class, err)
			}
			made++
			if progress != nil {
				progress(m)
			}
		}
	}
	return made, ctx.Err()
}

// count is how many members of class c are ready.
func (p *Pool) count(c Class) (int, error) {
	ms, err := p.Members()
	n := 0
	for _, m := range ms {
		if m.Class == c && m.State == Ready {
			n++
		}
	}
	return n, err
}

// prune removes members that are broken, of a class the pool no longer keeps, or left by a
// process that died (a fill or a run killed with -9). Call it under the fill lock.
func (p *Pool) prune(ctx context.Context) error {
	ms, err := p.Members()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range ms {
		why := ""
		switch {
		case m.State != Ready && !m.Owner.Alive():
			why = "its " + m.State + " process is gone"
		case m.State == Ready && !p.keeps(m.Class):
			why = "the pool no longer keeps its class"
		case m.State == Ready:
			why = p.Broken(ctx, m)
		}
		if why == "" {
			continue
		}
		if m.State == Ready {
			fmt.Fprintf(os.Stderr, "moatc: pool member %s removed: %s\n", m.ID, why)
		}
		if err := p.Remove(ctx, m.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveAbandoned removes the members whose filling or claiming process died (kill -9 of a
// fill, or of a run before its record took the member): Reconcile's step, so every command
// finds them. It reads only the records unless one is abandoned, and never waits for a fill.
func (p *Pool) RemoveAbandoned(ctx context.Context) error {
	ms, err := p.Members()
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range ms {
		if m.State == Ready || m.Owner.Alive() {
			continue
		}
		// Under the lock, again: a fill may have finished it meanwhile.
		unlock, err := p.lock()
		if err != nil {
			return err
		}
		cur, err := p.read(m.ID)
		unlock()
		if err != nil || cur.State == Ready || cur.Owner.Alive() {
			continue
		}
		if err := p.Remove(ctx, m.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (p *Pool) keeps(c Class) bool {
	for _, s := range p.Sizes {
		if s.Class == c && s.N > 0 {
			return true
		}
	}
	return false
}

// make makes one member of class c.
func (p *Pool) make(ctx context.Context, c Class) (_ *Member, err error) {
	m := &Member{ID: state.NewID(), Class: c, State: Filling, Owner: state.Self(), Created: time.Now().UTC()}
	unlock, err := p.lock()
	if err != nil {
		return nil, err
	}
	err = p.write(m)
	unlock()
	if err != nil {
		return nil, fmt.Errorf("recording pool member %s: %w", m.ID, err)
	}
	// Undone with a context of its own: a fill stopped with SIGTERM still removes its half.
	defer func() {
		if err != nil {
			if rerr := p.Remove(context.WithoutCancel(ctx), m.ID); rerr != nil {
				err = fmt.Errorf("%w (undoing it failed too, run `moatc clean`: %v)", err, rerr)
			}
		}
	}()
	n, err := p.Net.Prepare(ctx, m.ID)
	if err != nil {
		return nil, err
	}
	if c.Runtime == "gvisor" {
		if fi, err := os.Stat(p.Pause); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("moatc-pause, a pool sandbox's only process, is not installed (%s): run `make install`", p.Pause)
		}
		if err := p.makeRootfs(); err != nil {
			return nil, err
		}
		cl, err := p.Client(ctx)
		if err != nil {
			return nil, err
		}
		sb := ctrd.Container{ID: SandboxID(m.ID), RunID: m.ID, Role: ctrd.RolePool, Runtime: p.Runtime(c), Hostname: sandboxHostname,
			Memory: c.Memory, CPUs: c.CPUs, Pids: c.Pids, NetNS: n.NetNSPath}
		if err := cl.CreateSandbox(ctx, sb, p.rootfs(), p.Pause); err != nil {
			return nil, err
		}
		m.Sandbox = sb.ID
		m.MemoryKB = memoryOf(sb.ID)
	}
	unlock, err = p.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	m.State, m.Owner = Ready, nil
	if err := p.write(m); err != nil {
		return nil, fmt.Errorf("recording pool member %s: %w", m.ID, err)
	}
	return m, nil
}

// makeRootfs makes the root of pool sandboxes: empty but for the mount points their spec
// needs. It is mounted read-only, so it stays empty.
func (p *Pool) makeRootfs() error {
	dir := p.rootfs()
	for _, d := range []string{"proc", "dev", "sys", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("making the pool sandboxes' root: %w", err)
		}
	}
	f, err := os.OpenFile(filepath.Join(dir, strings.TrimPrefix(ctrd.PausePath, "/")), os.O_CREATE|os.O_RDONLY, 0o755)
	if err != nil {
		return fmt.Errorf("making the pool sandboxes' root: %w", err)
	}
	return f.Close()
}

// Drain removes every member no run holds, after stopping a fill that runs.
func (p *Pool) Drain(ctx context.Context) ([]string, error) {
	p.stopFiller()
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, err
	}
	release, err := lockfile.Flock(p.fillLockPath(), unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer release()
	ms, err := p.Members()
	if err != nil {
		return nil, err
	}
	var gone []string
	var errs []error
	for _, m := range ms {
		if m.State == Claimed && m.Owner.Alive() {
			continue // a run's: it removes it when it ends
		}
		if err := p.Remove(ctx, m.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, m.ID)
	}
	return gone, errors.Join(errs...)
}

// stopFiller asks a running fill to stop (SIGTERM: it undoes the member it was making) and
// kills it if it has not within 10 s.
func (p *Pool) stopFiller() {
	b, err := os.ReadFile(p.fillerPath())
	if err != nil {
		return
	}
	var f state.Process
	if json.Unmarshal(b, &f) != nil || !f.Alive() {
		return
	}
	syscall.Kill(f.Pid, syscall.SIGTERM)
	for i := 0; i < 200 && f.Alive(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if f.Alive() {
		syscall.Kill(f.Pid, syscall.SIGKILL)
	}
}

// Refill starts a detached `moatc pool fill` unless one runs already or the pool keeps
// nothing. It never waits for the fill. after, if set, is the process the fill lets finish
// first (for at most a few seconds): the run that took a member, whose start it must not slow.
func (p *Pool) Refill(after *state.Process) {
	if p.Want() == 0 || p.FillCommand == nil || p.full() {
		return
	}
	if release, err := lockfile.Flock(p.fillLockPath(), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return // a fill runs: it makes what is missing
	} else {
		release()
	}
	argv := p.FillCommand()
	if after != nil {
		argv = append(argv, "--after", strconv.Itoa(after.Pid))
	}
	log, err := os.OpenFile(filepath.Join(p.Dir, "fill.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cmd.Start() == nil {
		go cmd.Wait() // reaped here if this moatc outlives it
	}
}

// full reports whether every class has its ready members (from the records alone: cheap).
func (p *Pool) full() bool {
	for _, s := range p.Sizes {
		if n, err := p.count(s.Class); err != nil || n < s.N {
			return false
		}
	}
	return true
}

// memoryOf is the PSS, in kB, of the shim of container id and every process below it (the
// sandbox, its gofer, systrap's stubs).
func memoryOf(id string) int64 {
	procs, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	shim := 0
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); err == nil {
			s := string(st)
			if i := strings.LastIndexByte(s, ')'); i >= 0 {
				if f := strings.Fields(s[i+1:]); len(f) > 1 {
					parent[pid], _ = strconv.Atoi(f[1])
				}
			}
		}
		if shim == 0 {
			cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			args := strings.Split(string(cmd), "\x00")
			if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-runsc-v1") {
				for i := 0; i+1 < len(args); i++ {
					if args[i] == "-id" && args[i+1] == id {
						shim = pid
					}
				}
			}
		}
	}
	if shim == 0 {
		return 0
	}
	var total int64
	for pid := range parent {
		for q := pid; q > 1; q = parent[q] {
			if q == shim {
				total += pssOf(pid)
				break
			}
		}
	}
	return total
}

func pssOf(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "Pss:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// Keeps reports whether the pool keeps members of a runtime ("gvisor" or "runc").
func (p *Pool) Keeps(runtime string) bool {
	for _, s := range p.Sizes {
		if s.Class.Runtime == runtime && s.N > 0 {
			return true
		}
	}
	return false
}
