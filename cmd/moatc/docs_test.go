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
