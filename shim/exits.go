package main

import (
	"sync"
	"time"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"gvisor.dev/gvisor/pkg/shim/v1/proc"
)

const (
	// waitFailedStatus is what gVisor's shim reports for a container whose
	// `runsc wait` failed (proc.internalErrorCode).
	waitFailedStatus = 128

	// reapWait bounds how long an exit reported as waitFailedStatus is held
	// back while the reaper has not yet reported the sandbox process.
	reapWait = 3 * time.Second

	// reapKeep is how long a reaped process's status is remembered.
	reapKeep = time.Minute
)

// exitFixer recovers the exit status of containers whose sandbox exited
// before `runsc wait` could ask it.
//
// gVisor's shim learns a container's exit status by running `runsc wait`.
// When the container exits quickly, the sandbox can be gone by the time that
// command asks it; runsc then falls back to the sandbox process's exit status,
// which for the root container is the container's status, but only its
// parent may collect it, and the parent is this shim: the sandbox is forked by
// `runsc create`, which exits, so the sandbox is reparented to the shim, a
// child subreaper whose reaper (containerd's reaper.Default) reaps it on
// SIGCHLD. `runsc wait` fails ("sandbox no longer running and its exit status
// is unavailable") and the stock shim reports 128.
//
// The fixer subscribes to the reaper for the shim's whole life and remembers
// recent exits by pid. It sits on proc.ExitCh, the channel on which gVisor's
// process objects report exits to the runsc task service: for an init process
// reported with status 128 it substitutes the status with which the reaper
// saw that container's sandbox process exit, then passes the exit on.
type exitFixer struct {
	mu      sync.Mutex
	changed chan struct{}         // closed and replaced whenever reaped grows
	reaped  map[int]reapedExit    // by pid
	inits   map[string]sandboxPid // by container id
}

type reapedExit struct {
	status int
	at     time.Time
}

type sandboxPid struct {
	pid     int
	created time.Time // exits reaped before this are from an older process
}

// startExitFixer must run after gVisor's runsc task service has been built
// (it reads proc.ExitCh once, when built) and before any container is created.
func startExitFixer() *exitFixer {
	f := &exitFixer{
		changed: make(chan struct{}),
		reaped:  map[int]reapedExit{},
		inits:   map[string]sandboxPid{},
	}
	go f.record(reaper.Default.Subscribe())

	toService := proc.ExitCh
	fromProcesses := make(chan proc.Exit, cap(toService))
	proc.ExitCh = fromProcesses
	go f.forward(fromProcesses, toService)
	return f
}

// track records the sandbox pid of container id (the pid Create returns).
func (f *exitFixer) track(id string, pid int, created time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inits[id] = sandboxPid{pid: pid, created: created}
}

func (f *exitFixer) untrack(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inits, id)
}

// record drains the reaper subscription. It must never stall: the reaper
// retries delivery to every subscriber.
func (f *exitFixer) record(exits chan runc.Exit) {
	for e := range exits {
		f.mu.Lock()
		for pid, r := range f.reaped {
			if e.Timestamp.Sub(r.at) > reapKeep {
				delete(f.reaped, pid)
			}
		}
		f.reaped[e.Pid] = reapedExit{status: e.Status, at: e.Timestamp}
		close(f.changed)
		f.changed = make(chan struct{})
		f.mu.Unlock()
	}
}

func (f *exitFixer) forward(in <-chan proc.Exit, out chan<- proc.Exit) {
	for e := range in {
		if e.Status == waitFailedStatus {
			if status, ok := f.sandboxStatus(e.ID); ok && status != e.Status {
				log.L.WithField("id", e.ID).Infof("runsc shim: runsc wait failed; exit status %d taken from the reaped sandbox process", status)
				e.Status = status
			}
		}
		out <- e
	}
}

// sandboxStatus returns the status with which the sandbox process of
// container id was reaped, waiting up to reapWait for the reaper.
func (f *exitFixer) sandboxStatus(id string) (int, bool) {
	deadline := time.NewTimer(reapWait)
	defer deadline.Stop()
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		sb, ok := f.inits[id]
		if !ok {
			return 0, false // an exec'd process, or not a container of ours
		}
		if r, ok := f.reaped[sb.pid]; ok && !r.at.Before(sb.created) {
			return r.status, true
		}
		changed := f.changed
		f.mu.Unlock()
		select {
		case <-changed:
			f.mu.Lock()
		case <-deadline.C:
			f.mu.Lock()
			log.L.WithField("id", id).Warnf("runsc shim: runsc wait failed and sandbox pid %d was not reaped within %v; reporting %d", sb.pid, reapWait, waitFailedStatus)
			return 0, false
		}
	}
}
