package agent

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

// Options are what the person chose for an agent run.
type Options struct {
	Version  string   // the npm version; "" for the latest
	Prompt   string   // one prompt, non-interactive; "" for an interactive session
	Args     []string // the agent's own arguments (after --, and agent.args)
	Home     string   // moatc's home, where the agent's state is kept
	Terminal bool     // stdin is a terminal
	// PolicySet: the person chose the policy (--policy, network.policy); the agent's strict
	// default does not apply.
	PolicySet bool
	DryRun    bool // make nothing (the state directory) yet
}

// Apply turns req, built from the flags and moatc.yaml as for `moatc run`, into a run of
// agent a: its CLI installed on top of the workspace's dependencies, its grant, a strict
// policy allowing its API and the workspace's package registries (unless the person chose a
// policy), a placeholder key, its state directory for this workspace as its home, and an
// interactive terminal unless a prompt was given. req.Deps must be set.
func Apply(req *run.Request, a Agent, o Options) error {
	s := &req.Spec
	if s.Detach && o.Prompt == "" {
		return errors.New("a detached agent needs a prompt: give -p PROMPT, or drop -d for an interactive session")
	}
	dep, err := a.Dependency(o.Version)
	if err != nil {
		return err
	}
	req.Deps.Entries = withEntry(req.Deps.Entries, "node", "node")
	req.Deps.Entries = withEntry(req.Deps.Entries, a.Dep, dep)
	parsed, err := deps.Parse(req.Deps.Entries)
	if err != nil {
		return err
	}
	s.Command = a.Args(o.Prompt, o.Args)
	s.Interactive = o.Prompt == "" && !s.Detach
	s.TTY = s.Interactive && o.Terminal
	env := s.Env[:0:0]
	for _, kv := range s.Env {
		if !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	s.Env = append(a.Environment(), env...)
	if s.TTY && !hasEnv(s.Env, "TERM") {
		s.Env = append(s.Env, "TERM=xterm")
	}
	if !contains(s.Grants, a.Grant) {
		s.Grants = append(s.Grants, a.Grant)
	}
	if !o.PolicySet {
		s.Policy = policy.Strict
		for _, h := range append(append([]string(nil), a.Hosts...), deps.RegistryHosts(parsed)...) {
			if !contains(s.Allow, h) {
				s.Allow = append(s.Allow, h)
			}
		}
	}
	dir := a.StateDir(o.Home, req.Workspace)
	if !o.DryRun {
		if err := stateDir(dir, s.User); err != nil {
			return err
		}
	}
	s.Mounts = append(s.Mounts, stateMount(dir))
	return nil
}

// withEntry adds a dependency entry named name (as text) unless the list has one by that
// name already, whatever its version: the workspace's own choice wins.
func withEntry(es []deps.Entry, name, text string) []deps.Entry {
	for _, e := range es {
		n, _, _ := strings.Cut(strings.TrimSpace(e.Text), "@")
		if n == name {
			return es
		}
		if ds, err := deps.Parse([]deps.Entry{e}); err == nil && len(ds) == 1 && ds[0].Name == name {
			return es
		}
	}
	return append(es, deps.Entry{Text: text})
}

// stateDir makes the agent's home for a workspace, owned by the run's user so the agent can
// write it, and private to them on the host.
func stateDir(dir, user string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("making the agent's state directory: %w", err)
	}
	uid, gid := -1, -1
	u, g, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(u); err == nil {
		uid = n
	}
	if n, err := strconv.Atoi(g); err == nil {
		gid = n
	}
	if uid >= 0 {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return fmt.Errorf("giving the agent's state directory to uid %d: %w", uid, err)
		}
	}
	return nil
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func hasEnv(env []string, k string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, k+"=") {
			return true
		}
	}
	return false
}

func stateMount(dir string) state.Mount {
	return state.Mount{Source: dir, Host: dir, Container: Home}
}
