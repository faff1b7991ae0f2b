package main

import (
	"errors"
	"os"
	"strconv"
	"strings"
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

// sandboxes follows, from the shim's reaper, the sandbox process of every
// root container this shim created.
//
// The sandbox process (`runsc boot`) is forked by `runsc create`, which
// exits, so the sandbox is reparented to the shim, a child subreaper whose
// reaper (containerd's reaper.Default) reaps it on SIGCHLD. The sandbox exits
// when the root container's init exits, with that container's status
// (128+signal for a signal), and a sandbox that is gone has no process left
// running. That is all the shim needs to know about the end of a root
// container; it is how the runc shim (Docker's path to runsc) learns it too.
//
// Three things rest on it:
//
//   - exits.go, forward: when `runsc wait` fails because the sandbox is
//     already gone ("exit status is unavailable", reported as 128), the status
//     the reaper saw is substituted.
//   - monitor.go: `runsc wait`, `runsc state` and `runsc kill` for a root
//     container are answered from here when the answer is known, instead of
//     executing runsc (each execution costs 10-25 ms, and several of them sat
//     on the path between a container's exit and containerd learning of it).
//   - service.go: Start, Pause and Resume record what `runsc state` would say.
type sandboxes struct {
	mu      sync.Mutex
	changed chan struct{}       // closed and replaced whenever reaped grows
	reaped  map[int]reapedExit  // by pid
	inits   map[string]*sandbox // root containers, by container id
	self    int                 // this process's pid
}

type reapedExit struct {
	status int
	at     time.Time
}

type sandbox struct {
	pid     int
	created time.Time // exits reaped before this are from an older process
	// started: `runsc start` succeeded (set by the Start wrapper).
	started bool
	// paused: a Pause was requested and no Resume has succeeded since.
	paused bool
	// watched: the sandbox is a child of this shim, so its exit will reach the
	// reaper (or already has).
	watched bool
}

func newSandboxes() *sandboxes {
	return &sandboxes{
		changed: make(chan struct{}),
		reaped:  map[int]reapedExit{},
		inits:   map[string]*sandbox{},
		self:    os.Getpid(),
	}
}

// startSandboxes must run after gVisor's runsc task service has been built
// (it reads proc.ExitCh once, when built) and before any container is created.
func startSandboxes() *sandboxes {
	s := newSandboxes()
	go s.record(reaper.Default.Subscribe())

	toService := proc.ExitCh
	fromProcesses := make(chan proc.Exit, cap(toService))
	proc.ExitCh = fromProcesses
	go s.forward(fromProcesses, toService)
	return s
}

// track records the sandbox pid of root container id (the pid Create returns).
func (s *sandboxes) track(id string, pid int, created time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inits[id] = &sandbox{pid: pid, created: created}
}

func (s *sandboxes) untrack(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.inits, id)
	s.signalLocked() // wake waiters on id
}

// update applies fn to the record of container id, if it is tracked.
func (s *sandboxes) update(id string, fn func(*sandbox)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sb, ok := s.inits[id]; ok {
		fn(sb)
	}
}

// record drains the reaper subscription. It must never stall: the reaper
// retries delivery to every subscriber.
func (s *sandboxes) record(exits chan runc.Exit) {
	for e := range exits {
		s.mu.Lock()
		for pid, r := range s.reaped {
			if e.Timestamp.Sub(r.at) > reapKeep {
				delete(s.reaped, pid)
			}
		}
		s.reaped[e.Pid] = reapedExit{status: e.Status, at: e.Timestamp}
		s.signalLocked()
		s.mu.Unlock()
	}
}

func (s *sandboxes) signalLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// exitLocked returns the status with which the sandbox of sb was reaped.
func (s *sandboxes) exitLocked(sb *sandbox) (int, bool) {
	r, ok := s.reaped[sb.pid]
	if !ok || r.at.Before(sb.created) {
		return 0, false
	}
	return r.status, true
}

// exited reports whether the sandbox of root container id is known to be gone.
func (s *sandboxes) exited(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.inits[id]
	if !ok {
		return false
	}
	_, ok = s.exitLocked(sb)
	return ok
}

// watch reports whether the exit of root container id's sandbox can be taken
// from the reaper: it has been reaped already, or this shim is its parent.
// (If some other process were its parent, its exit would never reach this
// shim; gVisor's own `runsc wait` is then the only way to learn it.)
func (s *sandboxes) watch(id string) bool {
	s.mu.Lock()
	sb, ok := s.inits[id]
	if !ok {
		s.mu.Unlock()
		return false
	}
	if _, reaped := s.exitLocked(sb); sb.watched || reaped {
		sb.watched = true
		s.mu.Unlock()
		return true
	}
	pid := sb.pid
	s.mu.Unlock()

	ppid, err := parentOf(pid)

	s.mu.Lock()
	defer s.mu.Unlock()
	if sb, ok = s.inits[id]; !ok {
		return false
	}
	_, reaped := s.exitLocked(sb)
	// A pid can be reused only once reaped, and reaping is recorded here, so
	// a live process with this pid and this parent is the sandbox. (Which
	// status is reported never depends on this check: it is always the
	// reaped status of this pid, reaped after the container was created.)
	if reaped || (err == nil && ppid == s.self) {
		sb.watched = true
	}
	return sb.watched
}

// status is what `runsc state` would report for root container id, if it is
// known without asking runsc: "stopped" once its sandbox is gone, "running"
// once it was started, while the shim watches its sandbox and no pause is in
// the way.
func (s *sandboxes) status(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb, ok := s.inits[id]
	switch {
	case !ok:
		return "", false
	case sb.watched:
		if _, reaped := s.exitLocked(sb); reaped {
			return "stopped", true
		}
		if sb.started && !sb.paused {
			return "running", true
		}
	}
	return "", false
}

// waitExit returns the status with which the sandbox process of root
// container id was reaped, waiting for the reaper up to timeout (forever if
// timeout is 0). It returns false if the container is not (or no longer)
// tracked, or on timeout.
func (s *sandboxes) waitExit(id string, timeout time.Duration) (int, bool) {
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for {
		sb, ok := s.inits[id]
		if !ok {
			return 0, false // an exec'd process, or not a root container of ours
		}
		if status, ok := s.exitLocked(sb); ok {
			return status, true
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
			s.mu.Lock()
		case <-deadline:
			s.mu.Lock()
			return 0, false
		}
	}
}

// forward passes exits from gVisor's process objects to the runsc task
// service (proc.ExitCh). For a root container reported with status 128
// because `runsc wait` failed, it substitutes the status with which the
// reaper saw that container's sandbox process exit.
func (s *sandboxes) forward(in <-chan proc.Exit, out chan<- proc.Exit) {
	for e := range in {
		if e.Status == waitFailedStatus {
			if status, ok := s.waitExit(e.ID, reapWait); ok && status != e.Status {
				log.L.WithField("id", e.ID).Infof("runsc shim: runsc wait failed; exit status %d taken from the reaped sandbox process", status)
				e.Status = status
			} else if !ok && s.tracked(e.ID) {
				log.L.WithField("id", e.ID).Warnf("runsc shim: runsc wait failed and the sandbox was not reaped within %v; reporting %d", reapWait, waitFailedStatus)
			}
		}
		out <- e
	}
}

func (s *sandboxes) tracked(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.inits[id]
	return ok
}

// parentOf returns the parent pid of process pid, from /proc/PID/stat.
func parentOf(pid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 {
		return 0, errors.New("malformed stat")
	}
	return strconv.Atoi(fields[1])
}
