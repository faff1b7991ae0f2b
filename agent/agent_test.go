package agent

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

func TestLookup(t *testing.T) {
	for _, name := range []string{"claude", "Claude", "claude-code", "@anthropic-ai/claude-code"} {
		if a, err := Lookup(name); err != nil || a.Name != "claude" {
			t.Errorf("Lookup(%q) = %v, %v", name, a.Name, err)
		}
	}
	for name, want := range map[string]string{"claud": "did you mean claude?", "codx": "did you mean codex?", "gemni": "did you mean gemini?", "vim": "known: claude, codex, copilot, gemini)"} {
		_, err := Lookup(name)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Lookup(%q): %v, want %q", name, err, want)
		}
	}
	if _, err := Lookup("vim"); strings.Contains(err.Error(), "did you mean") {
		t.Errorf("a far name got a suggestion: %v", err)
	}
}

func TestArgsAndEnvironment(t *testing.T) {
	a, _ := Lookup("claude")
	if got := a.Args("fix it", []string{"--model", "x"}); !slices.Equal(got, []string{"claude", "--dangerously-skip-permissions", "-p", "fix it", "--model", "x"}) {
		t.Errorf("Args = %q", got)
	}
	if got := a.Args("", nil); !slices.Equal(got, []string{"claude", "--dangerously-skip-permissions"}) {
		t.Errorf("interactive Args = %q", got)
	}
	env := a.Environment()
	if env[0] != "HOME="+Home || !slices.Contains(env, "ANTHROPIC_API_KEY="+Placeholder) || !slices.Contains(env, "IS_SANDBOX=1") {
		t.Errorf("Environment = %q", env)
	}
	c, _ := Lookup("copilot")
	if !slices.Contains(c.Environment(), "COPILOT_GITHUB_TOKEN=github_pat_moatc_proxy_adds_the_real_token") {
		t.Errorf("copilot's placeholder: %q", c.Environment())
	}
	if _, err := a.Dependency("1.2.3; rm -rf /"); err == nil {
		t.Errorf("a version with a shell command was accepted")
	}
	if d, err := a.Dependency("^2.1"); err != nil || d != "claude-code@^2.1" {
		t.Errorf("Dependency(^2.1) = %q, %v", d, err)
	}
	// Every agent installs from an entry of the dependency registry, with its grant a provider.
	for _, ag := range All() {
		if _, err := deps.Parse([]deps.Entry{{Text: "node"}, {Text: ag.Dep}}); err != nil {
			t.Errorf("%s: its dependency %q: %v", ag.Name, ag.Dep, err)
		}
	}
}

func request(t *testing.T, entries ...string) *run.Request {
	req := &run.Request{Workspace: t.TempDir(), Deps: &run.Deps{}}
	for _, e := range entries {
		req.Deps.Entries = append(req.Deps.Entries, deps.Entry{Text: e})
	}
	req.Spec = state.Spec{User: "1000:1000", Env: []string{"HOME=/tmp", "FOO=bar"}, Policy: policy.Permissive}
	return req
}

func TestApply(t *testing.T) {
	home := t.TempDir()
	a, _ := Lookup("codex")
	req := request(t, "node@22", "go")
	if err := Apply(req, a, Options{Home: home, Prompt: "hi", Version: "0.50.0"}); err != nil {
		t.Fatal(err)
	}
	s := req.Spec
	var entries []string
	for _, e := range req.Deps.Entries {
		entries = append(entries, e.Text)
	}
	if !slices.Equal(entries, []string{"node@22", "go", "codex@0.50.0"}) {
		t.Errorf("dependencies %q: the workspace's node kept, the agent added", entries)
	}
	if s.Policy != policy.Strict || !slices.Equal(s.Allow, []string{"api.openai.com", "proxy.golang.org", "registry.npmjs.org", "sum.golang.org"}) {
		t.Errorf("policy %s allow %q", s.Policy, s.Allow)
	}
	if !slices.Equal(s.Grants, []string{"openai"}) || s.Interactive || s.TTY {
		t.Errorf("grants %q interactive %v tty %v", s.Grants, s.Interactive, s.TTY)
	}
	if slices.Contains(s.Env, "HOME=/tmp") || !slices.Contains(s.Env, "HOME="+Home) || !slices.Contains(s.Env, "FOO=bar") {
		t.Errorf("env %q", s.Env)
	}
	if s.Command[0] != "codex" || s.Command[len(s.Command)-1] != "hi" {
		t.Errorf("command %q", s.Command)
	}
	m := s.Mounts[len(s.Mounts)-1]
	if m.Container != Home || !strings.HasPrefix(m.Host, filepath.Join(home, "agents", "codex")) {
		t.Errorf("state mount %+v", m)
	}
	if fi, err := os.Stat(m.Host); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v %v", fi, err)
	}

	// A version asked for replaces the workspace's own entry for the agent.
	req = request(t, "node", "codex")
	if err := Apply(req, a, Options{Home: home, Prompt: "x", Version: "0.1.0"}); err != nil {
		t.Fatal(err)
	}
	if len(req.Deps.Entries) != 2 || req.Deps.Entries[1].Text != "codex@0.1.0" {
		t.Errorf("entries %+v", req.Deps.Entries)
	}

	// A policy the person chose stays; a detached session needs a prompt.
	req = request(t)
	if err := Apply(req, a, Options{Home: home, PolicySet: true, Terminal: true}); err != nil {
		t.Fatal(err)
	}
	if req.Spec.Policy != policy.Permissive || len(req.Spec.Allow) != 0 || !req.Spec.TTY {
		t.Errorf("chosen policy: %s %q tty %v", req.Spec.Policy, req.Spec.Allow, req.Spec.TTY)
	}
	req = request(t)
	req.Spec.Detach = true
	if err := Apply(req, a, Options{Home: home}); err == nil || !strings.Contains(err.Error(), "-p PROMPT") {
		t.Errorf("detached without a prompt: %v", err)
	}
}

// A new state directory gets the seed files; one that exists is the workload's and is never
// written from the host, even where the workload planted a link.
func TestStateDirSeedsOnce(t *testing.T) {
	home := t.TempDir()
	g, _ := Lookup("gemini")
	ws := t.TempDir()
	dir := g.StateDir(home, ws)
	if err := stateDir(dir, "", g.Seed); err != nil {
		t.Fatal(err)
	}
	settings := filepath.Join(dir, ".gemini", "settings.json")
	if b, err := os.ReadFile(settings); err != nil || !strings.Contains(string(b), "gemini-api-key") {
		t.Fatalf("seed: %q %v", b, err)
	}
	outside := filepath.Join(t.TempDir(), "host-file")
	os.Remove(settings)
	os.Symlink(outside, settings)
	if err := stateDir(dir, "", g.Seed); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(outside); !os.IsNotExist(err) {
		t.Errorf("a host write followed the workload's link: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) != 1 {
		t.Errorf("left over: %v", ents)
	}
}
