package main

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
)

// commandPaths lists every command and subcommand as the words that name it.
func commandPaths(prefix []string, cmds []*cli.Command) [][]string {
	var out [][]string
	for _, c := range cmds {
		p := append(append([]string(nil), prefix...), c.Name)
		out = append(out, p)
		out = append(out, commandPaths(p, c.Subcommands)...)
	}
	return out
}

func renderHelp(t *testing.T, words []string) string {
	t.Helper()
	var out bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &out
	args := append(append([]string{"moatc"}, words...), "--help")
	if err := app.Run(args); err != nil {
		t.Fatalf("moatc %v: %v\n%s", args[1:], err, out.String())
	}
	if out.Len() == 0 {
		t.Fatalf("moatc %v printed nothing", args[1:])
	}
	return out.String()
}

// Help fits a terminal: every command's, at most 80 columns (100 for a word too long to
// break, such as a URL), and flags' usages under their names.
func TestHelpFitsTheTerminal(t *testing.T) {
	paths := append([][]string{nil}, commandPaths(nil, newApp().Commands)...)
	if len(paths) < 20 {
		t.Fatalf("only %d commands found", len(paths))
	}
	for _, p := range paths {
		help := renderHelp(t, p)
		if !strings.Contains(help, "NAME:") || !strings.Contains(help, "USAGE:") {
			t.Errorf("moatc %s --help is not help:\n%s", strings.Join(p, " "), help)
		}
		for _, l := range strings.Split(help, "\n") {
			if strings.HasSuffix(l, " value") && strings.Contains(l, "--") {
				t.Errorf("moatc %s --help: a flag without a value name (put it in backquotes in its usage): %s", strings.Join(p, " "), l)
			}
			n := utf8.RuneCountInString(l)
			if n > 100 || (n > helpWidth && strings.Contains(strings.TrimSpace(l), " ")) {
				t.Errorf("moatc %s --help: a line of %d columns:\n%s", strings.Join(p, " "), n, l)
			}
		}
	}
	if h := renderHelp(t, nil); strings.Contains(h, "--prefix make setup") || !strings.Contains(h, "--address SOCKET\n") {
		t.Errorf("global help:\n%s", h)
	}
}

// placeholder is what a flag's `quoted` word may be: a name in capitals ([IP:]HOST:PORT,
// K=V), or a quoted example such as 'Name: template'.
var placeholder = regexp.MustCompile(`^('[^']+'|[A-Z\[][A-Za-z0-9_=:\[\]|/.,-]*)$`)

// urfave/cli takes the first `quoted` word of a flag's usage as its value's name: prose in
// backquotes (`make setup`) would print as --prefix make setup.
func TestNoStrayPlaceholder(t *testing.T) {
	app := newApp()
	check := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok {
				continue
			}
			ph, rest := unquoteUsage(df.GetUsage())
			name := where + " --" + f.Names()[0]
			switch {
			case ph != "" && !df.TakesValue():
				t.Errorf("%s takes no value but its usage quotes %q", name, ph)
			case ph != "" && !placeholder.MatchString(ph):
				t.Errorf("%s: `%s` in its usage is not a value's name (write it in capitals, or without backquotes)", name, ph)
			case strings.Contains(rest, "`"):
				t.Errorf("%s: a second `quoted` word in its usage prints with its backquotes: %q", name, df.GetUsage())
			}
		}
	}
	check("moatc", app.Flags)
	var walk func(prefix string, cmds []*cli.Command)
	walk = func(prefix string, cmds []*cli.Command) {
		for _, c := range cmds {
			check(prefix+" "+c.Name, c.Flags)
			walk(prefix+" "+c.Name, c.Subcommands)
		}
	}
	walk("moatc", app.Commands)
	// The check itself finds what it is for.
	if ph, _ := unquoteUsage("where `make setup` installed it"); placeholder.MatchString(ph) {
		t.Errorf("%q taken for a placeholder", ph)
	}
}

func TestReflow(t *testing.T) {
	in := "a paragraph written\non two lines\n\n  moatc run -- true" + strings.Repeat(" ", 60) + "# a comment that is long\n" + strings.Repeat("word ", 30)
	got := reflow(in, 3)
	want := "a paragraph written on two lines\n\n     moatc run -- true" + strings.Repeat(" ", 34) + "# a comment that is long\n   " +
		strings.TrimSpace(strings.Repeat("word ", 15)) + "\n   " + strings.TrimSpace(strings.Repeat("word ", 15))
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
