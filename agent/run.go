package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

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
	req.Deps.Entries = withEntry(req.Deps.Entries, "node", "node", false)
	// A version asked for wins over the workspace's own entry for the agent.
	req.Deps.Entries = withEntry(req.Deps.Entries, a.Dep, dep, o.Version != "")
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
	if !slices.Contains(s.Grants, a.Grant) {
		s.Grants = append(s.Grants, a.Grant)
	}
	if !o.PolicySet {
		s.Policy = policy.Strict
		for _, h := range append(append([]string(nil), a.Hosts...), deps.RegistryHosts(parsed)...) {
			if !slices.Contains(s.Allow, h) {
				s.Allow = append(s.Allow, h)
			}
		}
	}
	dir := a.StateDir(o.Home, req.Workspace)
	if !o.DryRun {
		if err := stateDir(dir, s.User, a.Seed); err != nil {
			return err
		}
	}
	s.Mounts = append(s.Mounts, stateMount(dir))
	return nil
}

// withEntry adds a dependency entry named name (as text) unless the list has one by that
// name already, whatever its version: the workspace's own choice wins, unless replace.
func withEntry(es []deps.Entry, name, text string, replace bool) []deps.Entry {
	for i, e := range es {
		n, _, _ := strings.Cut(strings.TrimSpace(e.Text), "@")
		same := n == name
		if !same {
			ds, err := deps.Parse([]deps.Entry{e})
			same = err == nil && len(ds) == 1 && ds[0].Name == name
		}
		if same {
			if replace {
				out := append([]deps.Entry(nil), es...)
				out[i].Text = text
				return out
			}
			return es
		}
	}
	return append(es, deps.Entry{Text: text})
}

// stateDir makes the agent's home for a workspace, owned by the run's user so the agent can
// write it, and private to them on the host. A new one gets the agent's seed files; an
// existing one is the workload's and is never written from the host (a file there may be a
// link planted to lead a host write elsewhere).
func stateDir(dir, user string, seed map[string]string) error {
	uid, gid := -1, -1
	u, g, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(u); err == nil {
		uid = n
	}
	if n, err := strconv.Atoi(g); err == nil {
		gid = n
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("making the agent's state directory: %w", err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".new-")
	if err != nil {
		return fmt.Errorf("making the agent's state directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	for rel, content := range seed {
		p := filepath.Join(tmp, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("seeding the agent's state directory: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			return fmt.Errorf("seeding the agent's state directory: %w", err)
		}
	}
	if uid >= 0 {
		err := filepath.Walk(tmp, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, gid)
		})
		if err != nil {
			return fmt.Errorf("giving the agent's state directory to uid %d: %w", uid, err)
		}
	}
	// Made whole, then put in place: only if there is none yet.
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return fmt.Errorf("making the agent's state directory: %w", err)
	}
	return nil
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
