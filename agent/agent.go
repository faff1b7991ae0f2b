// Package agent knows the coding agents moatc runs in one command (moatc claude, codex,
// gemini, copilot): the npm package that installs each, the grant that holds its key, the
// hosts it talks to, how it is started interactively and for one prompt, and how its own
// permission prompts are set for running inside moatc's sandbox. The key never enters the
// container: the agent gets a placeholder in the variable it reads, and the run's proxy puts
// the real key on its requests to the agent's API hosts.
package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/moatc/moatc/internal/suggest"
)

// Placeholder is what an agent finds in its key variable: enough for it to start and send
// requests, which the proxy completes with the real key from the grant.
const Placeholder = "moatc-proxy-adds-the-real-key"

// Home is the agent's home directory in the container: its state, kept per workspace under
// moatc's home, is mounted there.
const Home = "/home/agent"

// Agent is one agent CLI.
type Agent struct {
	Name    string // the command: moatc NAME
	Title   string
	Package string // npm package that installs the CLI
	Dep     string // its name in moatc's dependency registry
	Command string // the CLI's executable
	Grant   string // the grant holding its key (a provider of package grant)
	// KeyEnv are the variables the CLI reads its key from; each gets Placeholder.
	KeyEnv []string
	Hosts  []string          // the hosts its API lives on: allowed when the policy is strict
	Env    map[string]string // set for every run: no update checks or telemetry
	// Sandboxed are the arguments that turn off the CLI's own approval prompts and sandbox,
	// as its docs say to do inside an external sandbox: moatc's is the boundary.
	Sandboxed []string
	// Prompt returns the arguments for one non-interactive prompt.
	Prompt func(text string) []string
	// Placeholder replaces the package's Placeholder for a CLI that checks the key's shape.
	Placeholder string
	// Seed are files (relative to the agent's home) written when its state directory is made:
	// settings the CLI needs to run headless with a key from its variable.
	Seed map[string]string
	// State names what the CLI keeps under its home, for the docs.
	State string
}

var agents = []Agent{
	{
		Name: "claude", Title: "Claude Code", Package: "@anthropic-ai/claude-code", Dep: "claude-code", Command: "claude",
		Grant: "anthropic", KeyEnv: []string{"ANTHROPIC_API_KEY"}, Hosts: []string{"api.anthropic.com"},
		Env: map[string]string{
			"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
			// Claude Code refuses --dangerously-skip-permissions as root unless it is told
			// it runs in a sandbox; moatc's is one.
			"IS_SANDBOX": "1",
		},
		Sandboxed: []string{"--dangerously-skip-permissions"},
		Prompt:    func(t string) []string { return []string{"-p", t} },
		State:     "~/.claude and ~/.claude.json",
	},
	{
		Name: "codex", Title: "OpenAI Codex CLI", Package: "@openai/codex", Dep: "codex", Command: "codex",
		Grant: "openai", KeyEnv: []string{"CODEX_API_KEY", "OPENAI_API_KEY"}, Hosts: []string{"api.openai.com"},
		Env: map[string]string{},
		// Codex's own sandbox (Landlock and seccomp) is for running on a bare host; inside an
		// externally sandboxed container its docs say to turn it and the approvals off.
		// Its built-in provider sends CODEX_API_KEY (OPENAI_API_KEY is for login); analytics and
		// the plugin marketplace (a git clone from github.com) would only meet the policy.
		Sandboxed: []string{"--dangerously-bypass-approvals-and-sandbox", "--disable", "plugins", "-c", "analytics.enabled=false"},
		Prompt:    func(t string) []string { return []string{"exec", "--skip-git-repo-check", t} },
		State:     "~/.codex",
	},
	{
		Name: "gemini", Title: "Gemini CLI", Package: "@google/gemini-cli", Dep: "gemini-cli", Command: "gemini",
		Grant: "google", KeyEnv: []string{"GEMINI_API_KEY"}, Hosts: []string{"generativelanguage.googleapis.com"},
		Env: map[string]string{"GEMINI_CLI_TRUST_WORKSPACE": "true"},
		// Headless, it asks for an auth method unless the settings name the key's.
		Seed:      map[string]string{".gemini/settings.json": `{"security":{"auth":{"selectedType":"gemini-api-key"}},"privacy":{"usageStatisticsEnabled":false}}` + "\n"},
		Sandboxed: []string{"--yolo"},
		Prompt:    func(t string) []string { return []string{"-p", t} },
		State:     "~/.gemini",
	},
	{
		Name: "copilot", Title: "GitHub Copilot CLI", Package: "@github/copilot", Dep: "copilot", Command: "copilot",
		Grant: "github", KeyEnv: []string{"COPILOT_GITHUB_TOKEN"},
		// It refuses tokens not shaped like a fine-grained one before sending them.
		Placeholder: "github_pat_moatc_proxy_adds_the_real_token",
		Hosts:       []string{"api.githubcopilot.com", "*.githubcopilot.com", "api.github.com"},
		Env:         map[string]string{},
		Sandboxed:   []string{"--allow-all-tools"},
		Prompt:      func(t string) []string { return []string{"-p", t} },
		State:       "~/.copilot",
	},
}

// All returns the agents, by name.
func All() []Agent {
	out := append([]Agent(nil), agents...)
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// UnknownError is a name that is no agent.
type UnknownError struct {
	Name    string
	Suggest string // the closest agent's name, if one is close
}

func (e *UnknownError) Error() string {
	names := make([]string, 0, len(agents))
	for _, a := range All() {
		names = append(names, a.Name)
	}
	msg := fmt.Sprintf("%q is not an agent moatc knows (known: %s)", e.Name, strings.Join(names, ", "))
	if e.Suggest != "" {
		msg += fmt.Sprintf("; did you mean %s?", e.Suggest)
	}
	return msg
}

// Lookup returns the agent called name. Its aliases (claude-code, openai, ...) are accepted.
func Lookup(name string) (Agent, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	for _, a := range agents {
		if n == a.Name || n == a.Dep || n == a.Command || n == a.Package {
			return a, nil
		}
	}
	best, dist := "", suggest.Limit(len(n))+1
	for _, a := range agents {
		for _, cand := range []string{a.Name, a.Dep} {
			if d := suggest.Distance(n, cand); d < dist {
				best, dist = a.Name, d
			}
		}
	}
	return Agent{}, &UnknownError{Name: name, Suggest: best}
}

var version = regexp.MustCompile(`^[0-9A-Za-z^~<>=][0-9A-Za-z.+^~<>=*-]*$`)

// Dependency returns the dependency list entry that installs the agent, at version ("" for
// the latest the npm registry has).
func (a Agent) Dependency(v string) (string, error) {
	if v == "" {
		return a.Dep, nil
	}
	if !version.MatchString(v) {
		return "", fmt.Errorf("%q is not a version of %s: write a version such as 2.1.3 or ^2", v, a.Package)
	}
	return a.Dep + "@" + v, nil
}

// Args returns the command line that starts the agent: interactively when prompt is "",
// else for that one prompt; extra are the person's own arguments, last.
func (a Agent) Args(prompt string, extra []string) []string {
	args := append([]string{a.Command}, a.Sandboxed...)
	if prompt != "" {
		args = append(args, a.Prompt(prompt)...)
	}
	return append(args, extra...)
}

// Environment returns the variables set for the agent: its settings and a placeholder for
// each key variable, sorted.
func (a Agent) Environment() []string {
	env := []string{"HOME=" + Home}
	for k, v := range a.Env {
		env = append(env, k+"="+v)
	}
	ph := Placeholder
	if a.Placeholder != "" {
		ph = a.Placeholder
	}
	for _, k := range a.KeyEnv {
		env = append(env, k+"="+ph)
	}
	sort.Strings(env[1:])
	return env
}

// StateDir is where the agent's home is kept for workspace ws, under moatc's home: one per
// agent and workspace, never the person's own ~/.claude.
func (a Agent) StateDir(moatcHome, ws string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(ws)))
	return filepath.Join(moatcHome, "agents", a.Name, filepath.Base(ws)+"-"+hex.EncodeToString(sum[:6]))
}
