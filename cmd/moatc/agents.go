package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/agent"
	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/internal/suggest"
	"github.com/moatc/moatc/run"
)

// agentCommands are moatc claude, codex, gemini and copilot: a run with the agent's CLI.
func agentCommands() []*cli.Command {
	var cmds []*cli.Command
	for _, a := range agent.All() {
		cmds = append(cmds, &cli.Command{
			Name:                   a.Name,
			Usage:                  "run " + a.Title + " in the sandbox against a workspace, its key held by moatc's proxy",
			ArgsUsage:              "[PATH] [-- AGENT ARGS...]",
			UseShortOptionHandling: true,
			Description: fmt.Sprintf(`Runs %[1]s (npm %[2]s, installed into the run's image on top of the workspace's
dependencies) against PATH (default: the current directory), mounted at /workspace.

Its key is the %[3]s grant: store it once with 'moatc grant %[3]s'. The agent finds a
placeholder in %[4]s; moatc's proxy puts the real key on its requests to %[5]s, so
the key never enters the container.

The egress policy is strict unless you choose one: the agent reaches %[5]s and
the package registries of the workspace's dependencies, nothing else (add hosts with --allow,
or --policy permissive). Its own approval prompts are off (%[6]s): moatc's sandbox is the
boundary. Its state (%[7]s) is kept per workspace in moatc's home, under
agents/%[8]s/, never your own home, and never holds the key.

Every flag of 'moatc run' works here, except that -p is --prompt (publish with --publish).
Examples:
  moatc %[8]s                          # an interactive session in the current directory
  moatc %[8]s -p 'fix the failing test' ./proj
  moatc %[8]s --agent-version 1.2.3 --allow github.com
  moatc %[8]s --dry-run                # what would run: image, grant, policy, state`,
				a.Title, a.Package, a.Grant, strings.Join(a.KeyEnv, " and "), strings.Join(a.Hosts, ", "),
				strings.Join(a.Sandboxed, " "), a.State, a.Name),
			Flags:  runFlags(true),
			Action: func(c *cli.Context) error { return runAction(c, a.Name) },
		})
	}
	return cmds
}

// commandNotFound says which command was probably meant.
func commandNotFound(c *cli.Context, name string) {
	best, dist := "", suggest.Limit(len(name))+1
	for _, cmd := range c.App.VisibleCommands() {
		if d := suggest.Distance(name, cmd.Name); d < dist {
			best, dist = cmd.Name, d
		}
	}
	msg := fmt.Sprintf("moatc: %q is not a moatc command (see `moatc --help`)", name)
	if best != "" {
		msg += fmt.Sprintf("; did you mean `moatc %s`?", best)
	}
	fmt.Fprintln(c.App.ErrWriter, msg)
	cli.OsExiter(2)
}

// agentRequest makes req a run of the agent called name (the agent command's, or the one
// moatc.yaml names for a run with no command), if any; the command line's command is its
// own arguments.
func agentRequest(c *cli.Context, req *run.Request, o *run.Options, file *config.File, name string) error {
	args := o.Command
	if name == "" && file.Agent != nil && len(args) == 0 {
		name = file.Agent.Name
	}
	if name == "" {
		return nil
	}
	a, err := agent.Lookup(name)
	if err != nil {
		if file.Agent != nil && name == file.Agent.Name {
			return &config.Error{Path: file.Path, Line: file.Agent.Line, Key: "agent", Msg: err.Error()}
		}
		return err
	}
	ao := agent.Options{Home: c.String("home"), Terminal: isTerminal(os.Stdin), DryRun: c.Bool("dry-run"),
		PolicySet: c.IsSet("policy") || file.NetPolicy != "", Args: args}
	if c.Command.Name != "run" {
		ao.Prompt, ao.Version = c.String("prompt"), c.String("agent-version")
	}
	if file.Agent != nil && agentMatches(a, file.Agent.Name) {
		ao.Version = pick(ao.Version, file.Agent.Version)
		ao.Args = append(append([]string(nil), file.Agent.Args...), ao.Args...)
	}
	if req.Deps == nil {
		req.Deps = o.DepsRequest(req.Workspace, file)
	}
	if err := agent.Apply(req, a, ao); err != nil {
		return usageError{err}
	}
	if ep := c.String("entrypoint"); ep != "" {
		req.Spec.Command = append([]string{ep}, args...)
	}
	if _, _, _, err := run.Plan(*req.Deps); err != nil {
		return err
	}
	return nil
}

func agentMatches(a agent.Agent, name string) bool {
	b, err := agent.Lookup(name)
	return err == nil && b.Name == a.Name
}
