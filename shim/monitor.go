package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"gvisor.dev/gvisor/pkg/shim/v1/runsccmd"
)

// runscMonitor is the process monitor through which gVisor's shim runs every
// runsc command (runsccmd.Monitor). It answers, without executing runsc,
// the commands about a root container whose answer the shim already has from
// its reaper (see sandboxes), and passes every other command on unchanged.
//
// Each runsc execution costs 10-25 ms (a 95 MB binary, Go start-up, loading
// the container's state), and gVisor's shim runs several of them where the
// runc shim runs none. For `ctr run IMG true` the stock sequence after
// `runsc start` was: `runsc state` (containerd's Start asks the task's state),
// `runsc wait` (fails: the sandbox is already gone), `runsc kill --all` (after
// the failed wait), then the exit is published, after another `runsc kill
// --all` (every init exit), then Delete runs one more `runsc kill --all`
// before `runsc delete`. Answered here:
//
//   - `runsc wait ID`: the status with which the reaper saw the sandbox exit,
//     printed as runsc prints it. The sandbox exits when the root container's
//     init has exited and with its status (128+signal for a signal), which is
//     what `runsc wait` reports; the runc shim takes the same status from its
//     reaper. Used only when the shim is the sandbox's parent (or has already
//     reaped it).
//   - `runsc state ID`: "stopped" once the sandbox is reaped; "running" after
//     a successful start while the sandbox is alive and not paused. The state
//     is otherwise asked of runsc.
//   - `runsc kill [...] ID SIG` once the sandbox is reaped: fails with runsc's
//     own message ("sandbox is not running"); nothing is left to signal.
//     gVisor's shim ignores that error where it kills everything after an
//     exit, and checks the state (stopped) before any other kill.
//
// Everything else (create, start, delete, exec, ps, events, pause, ...) and
// anything about subcontainers or exec'd processes runs runsc as before.
type runscMonitor struct {
	next runsccmd.ProcessMonitor
	sb   *sandboxes

	mu       sync.Mutex
	answered map[chan runc.Exit]struct{}
}

func newRunscMonitor(next runsccmd.ProcessMonitor, sb *sandboxes) *runscMonitor {
	return &runscMonitor{next: next, sb: sb, answered: map[chan runc.Exit]struct{}{}}
}

// Start implements runsccmd.ProcessMonitor.
func (m *runscMonitor) Start(cmd *exec.Cmd) (chan runc.Exit, error) {
	if ec := m.answer(cmd); ec != nil {
		m.mu.Lock()
		m.answered[ec] = struct{}{}
		m.mu.Unlock()
		return ec, nil
	}
	return m.next.Start(cmd)
}

// Wait implements runsccmd.ProcessMonitor.
func (m *runscMonitor) Wait(cmd *exec.Cmd, ec chan runc.Exit) (int, error) {
	m.mu.Lock()
	_, ok := m.answered[ec]
	delete(m.answered, ec)
	m.mu.Unlock()
	if !ok {
		return m.next.Wait(cmd, ec)
	}
	e := <-ec
	return e.Status, nil
}

// waitResult is what `runsc wait` prints (runsccmd.Runsc.Wait parses it).
type waitResult struct {
	ID         string `json:"id"`
	ExitStatus int    `json:"exitStatus"`
}

// answer returns the exit channel of cmd answered without running it, or nil
// if cmd must run.
func (m *runscMonitor) answer(cmd *exec.Cmd) chan runc.Exit {
	if cmd.Stdout == nil || cmd.Stderr == nil {
		return nil // output not captured: not a command answered here
	}
	sub, args, ok := runscSubcommand(cmd.Args)
	if !ok {
		return nil
	}
	ec := make(chan runc.Exit, 1)
	switch {
	case sub == "wait" && len(args) == 1:
		id := args[0]
		if !m.sb.watch(id) {
			return nil
		}
		log.L.Debugf("runsc shim: `runsc wait %s` answered by the reaper", id)
		go func() {
			status, ok := m.sb.waitExit(id, 0)
			if !ok { // deleted before its sandbox exited
				fmt.Fprintf(cmd.Stderr, "waiting on container %q: container no longer tracked\n", id)
				ec <- runc.Exit{Status: 1}
				return
			}
			log.L.Debugf("runsc shim: sandbox of %s reaped with status %d", id, status)
			writeJSON(cmd.Stdout, waitResult{ID: id, ExitStatus: status})
			ec <- runc.Exit{Status: 0}
		}()
		return ec

	case sub == "state" && len(args) == 1:
		id := args[0]
		status, ok := m.sb.status(id)
		if !ok {
			return nil
		}
		log.L.Debugf("runsc shim: `runsc state %s` answered: %s", id, status)
		// runsccmd.Runsc.State decodes runc.Container; gVisor's shim reads
		// only the status.
		writeJSON(cmd.Stdout, runc.Container{ID: id, Status: status})
		ec <- runc.Exit{Status: 0}
		return ec

	case sub == "kill" && len(args) >= 2:
		id := args[len(args)-2]
		if !m.sb.exited(id) {
			return nil
		}
		log.L.Debugf("runsc shim: `runsc kill %s` skipped: sandbox already reaped", strings.Join(args, " "))
		fmt.Fprintln(cmd.Stderr, "sandbox is not running")
		ec <- runc.Exit{Status: 1}
		return ec
	}
	return nil
}

func writeJSON(w io.Writer, v any) {
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.L.WithError(err).Warn("runsc shim: writing runsc answer")
	}
}

// runscSubcommand splits a runsc command line as gVisor's runsccmd builds it:
// the binary, global flags (all written --name=value), the subcommand, then its
// arguments. ok is false for anything else.
func runscSubcommand(argv []string) (sub string, args []string, ok bool) {
	if len(argv) < 2 {
		return "", nil, false
	}
	for i, a := range argv[1:] {
		if !strings.HasPrefix(a, "-") {
			return a, argv[i+2:], true
		}
		if !strings.Contains(a, "=") {
			return "", nil, false // a flag whose value may be the next word
		}
	}
	return "", nil, false
}
