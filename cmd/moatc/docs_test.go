package main

import (
	"os"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestCLIReferenceIsComplete: docs/cli.md names every command and every flag of each.
func TestCLIReferenceIsComplete(t *testing.T) {
	b, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			if c.Hidden || c.Name == "help" {
				continue
			}
			full := strings.TrimSpace(path + " " + c.Name)
			if !strings.Contains(doc, full) {
				t.Errorf("docs/cli.md does not mention `moatc %s`", full)
			}
			for _, f := range c.Flags {
				name := f.Names()[0]
				if name == "help" {
					continue
				}
				if !strings.Contains(doc, "--"+name) {
					t.Errorf("docs/cli.md does not mention --%s of `moatc %s`", name, full)
				}
			}
			walk(full, c.Subcommands)
		}
	}
	app := newApp()
	walk("", app.Commands)
	for _, f := range app.Flags {
		if !strings.Contains(doc, "--"+f.Names()[0]) {
			t.Errorf("docs/cli.md does not mention the global flag --%s", f.Names()[0])
		}
	}
}

// TestChangingCommandsTakeJSON: every command but those whose output is the workload's (or a
// script) prints its result as JSON with --json.
func TestChangingCommandsTakeJSON(t *testing.T) {
	exempt := map[string]bool{"exec": true, "logs": true, "attach": true, "completion": true, "_supervise": true,
		"kube export": true} // kube export prints manifests: -o json
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			full := strings.TrimSpace(path + " " + c.Name)
			if len(c.Subcommands) > 0 {
				walk(full, c.Subcommands)
				continue
			}
			has := false
			for _, f := range c.Flags {
				has = has || f.Names()[0] == "json"
			}
			if !has && !exempt[full] {
				t.Errorf("`moatc %s` has no --json", full)
			}
		}
	}
	walk("", newApp().Commands)
}
