package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The test binary stands in for moatc when the completion scripts call it back.
func TestMain(m *testing.M) {
	if os.Getenv("MOATC_TEST_AS_MOATC") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestCompletionScriptsAreValid(t *testing.T) {
	checks := map[string][]string{
		"bash": {"bash", "-n"},
		"zsh":  {"zsh", "-n"},
		"fish": {"fish", "--no-execute"},
	}
	for shell, check := range checks {
		t.Run(shell, func(t *testing.T) {
			s, err := completionScript(newApp(), shell)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(s, "moatc") || len(s) < 100 {
				t.Fatalf("script for %s does not complete moatc:\n%s", shell, s)
			}
			if shell == "fish" && !strings.Contains(s, "complete -c moatc") {
				t.Errorf("fish script has no completions:\n%s", s)
			}
			seen := map[string]bool{}
			for _, l := range strings.Split(s, "\n") {
				if shell == "fish" && l != "" && seen[l] {
					t.Errorf("%s script repeats a line: %s", shell, l)
				}
				seen[l] = true
			}
			if strings.Contains(s, "`") && shell == "fish" {
				t.Errorf("fish script keeps backquotes")
			}
			if _, err := exec.LookPath(check[0]); err != nil {
				// `make setup` installs zsh and fish, so CI checks every script.
				if os.Getenv("CI") == "true" {
					t.Fatalf("%s is not installed (make setup installs it): %v", check[0], err)
				}
				t.Skipf("%s is not installed (not CI, so skipping): its syntax is not checked", check[0])
			}
			p := filepath.Join(t.TempDir(), "moatc."+shell)
			if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(check[0], append(check[1:], p)...).CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", strings.Join(check, " "), err, out)
			}
		})
	}
	if _, err := completionScript(newApp(), "powershell"); err == nil {
		t.Error("an unknown shell was accepted")
	}
}

func TestGenerateBashCompletionListsCommands(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	// urfave/cli looks at os.Args for the word being completed.
	args := []string{"moatc", "--generate-bash-completion"}
	saved := os.Args
	os.Args = args
	defer func() { os.Args = saved }()
	if err := app.Run(args); err != nil {
		t.Fatal(err)
	}
	words := strings.Fields(out.String())
	for _, want := range []string{"run", "list", "events", "version", "completion", "destroy", "clean"} {
		if !hasWord(words, want) {
			t.Errorf("completion lacks %q: %v", want, words)
		}
	}
	if hasWord(words, "_supervise") {
		t.Errorf("a hidden command is offered: %v", words)
	}
}

// TestBashCompletionEndToEnd sources the script in bash and completes as the shell would,
// calling back the test binary as moatc.
func TestBashCompletionEndToEnd(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := bashCompletion + `
COMP_WORDS=("$SELF" ev); COMP_CWORD=1; _moatc_complete; echo "1:${COMPREPLY[*]}"
COMP_WORDS=("$SELF" events --fi); COMP_CWORD=2; _moatc_complete; echo "2:${COMPREPLY[*]}"
COMP_WORDS=("$SELF" list -); COMP_CWORD=2; _moatc_complete; echo "3:${COMPREPLY[*]}"
COMP_WORDS=("$SELF" run --dry-run -- touch x); COMP_CWORD=5; _moatc_complete; echo "4:${COMPREPLY[*]}"
out=$("$SELF" run --dry-run -- touch x --generate-bash-completion); echo "5:$?:$out"
`
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), "MOATC_TEST_AS_MOATC=1", "SELF="+self, "MOATC_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	got := string(out)
	// After --, the line is the workload's: nothing is completed from moatc, and moatc asked
	// anyway does nothing (not even a dry run).
	for _, want := range []string{"1:events\n", "2:--filter\n", "--json", "4:\n", "5:0:\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("completions %q lack %q", got, want)
		}
	}
}

func hasWord(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
