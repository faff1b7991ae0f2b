package run

import (
	"slices"
	"testing"
)

func TestMergeEnv(t *testing.T) {
	base := []string{"PATH=/bin", "HOME=/home/agent", "FOO=old"}
	got := mergeEnv(base, []string{"FOO=new", "BAR=1", "PATH=/usr/bin:/bin"})
	want := []string{"HOME=/home/agent", "FOO=new", "BAR=1", "PATH=/usr/bin:/bin"}
	if !slices.Equal(got, want) {
		t.Fatalf("mergeEnv: got %q, want %q", got, want)
	}
	if !slices.Equal(base, []string{"PATH=/bin", "HOME=/home/agent", "FOO=old"}) {
		t.Fatalf("mergeEnv changed its input: %q", base)
	}
	// A key that is a prefix of another is not confused with it.
	if got := mergeEnv([]string{"FOOBAR=1"}, []string{"FOO=2"}); !slices.Equal(got, []string{"FOOBAR=1", "FOO=2"}) {
		t.Fatalf("prefix key: %q", got)
	}
}

func TestExecStartError(t *testing.T) {
	for msg, want := range map[string]int{
		`executing command "x" in sandbox: error finding executable "x" in PATH`: 127,
		`exec: "x": executable file not found in $PATH`:                          127,
		`exec: "/etc/passwd": permission denied`:                                 126,
		`failed to load /etc/passwd: exec format error`:                          126,
		`ttrpc: closed`: 0,
	} {
		err := execStartError("r", errString(msg))
		code := 0
		if c := exitCodeOf(err); c != nil {
			code = *c
		}
		if code != want {
			t.Errorf("%q: code %d, want %d", msg, code, want)
		}
	}
}

type errString string

func (e errString) Error() string { return string(e) }
