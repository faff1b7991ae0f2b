package main

import (
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs moatc with stdin and returns what it printed on stdout and its error.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	go func() { io.WriteString(inW, stdin); inW.Close() }()
	oldIn, oldOut := os.Stdin, os.Stdout
	os.Stdin, os.Stdout = inR, outW
	done := make(chan string)
	go func() { b, _ := io.ReadAll(outR); done <- string(b) }()
	err := newApp().Run(append([]string{"moatc"}, args...))
	os.Stdin, os.Stdout = oldIn, oldOut
	outW.Close()
	inR.Close()
	return <-done, err
}

// The commands that change trust and grants print their result as JSON with --json, and
// nothing but JSON.
func TestTrustAndGrantJSON(t *testing.T) {
	home, ws := t.TempDir(), t.TempDir()
	cfg := filepath.Join(ws, "moatc.yaml")
	os.WriteFile(cfg, []byte("image: busybox\nsandbox: none\n"), 0o600)
	h := []string{"--home", home}
	decode := func(args []string, stdin string, v any) {
		t.Helper()
		out, err := runCLI(t, stdin, append(h, args...)...)
		if err != nil {
			t.Fatalf("moatc %v: %v", args, err)
		}
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("moatc %v printed what is not JSON: %v\n%s", args, err, out)
		}
	}

	var trusted struct {
		Path string   `json:"path"`
		Sum  string   `json:"sha256"`
		Keys []string `json:"keys"`
	}
	decode([]string{"trust", "--json", ws}, "", &trusted)
	if trusted.Path != cfg || len(trusted.Sum) != 64 || strings.Join(trusted.Keys, ",") != "sandbox" {
		t.Errorf("trust --json: %+v", trusted)
	}
	var untrusted struct {
		Path       string `json:"path"`
		WasTrusted *bool  `json:"was_trusted"`
	}
	decode([]string{"untrust", "--json", ws}, "", &untrusted)
	if untrusted.Path != cfg || untrusted.WasTrusted == nil || !*untrusted.WasTrusted {
		t.Errorf("untrust --json: %+v", untrusted)
	}
	untrusted.WasTrusted = nil
	decode([]string{"untrust", "--json", ws}, "", &untrusted)
	if untrusted.WasTrusted == nil || *untrusted.WasTrusted {
		t.Errorf("untrust --json of a file no longer trusted: %+v", untrusted)
	}

	const token = "ghp_secret0123456789"
	var stored struct {
		Name  string   `json:"name"`
		Hosts []string `json:"hosts"`
	}
	out, err := runCLI(t, token, append(h, "grant", "github", "--json")...)
	if err != nil || json.Unmarshal([]byte(out), &stored) != nil || stored.Name != "github" || len(stored.Hosts) == 0 {
		t.Errorf("grant github --json: %v %+v\n%s", err, stored, out)
	}
	if strings.Contains(out, token) {
		t.Errorf("grant --json printed the token: %s", out)
	}
	out, err = runCLI(t, token, append(h, "grant", "add", "sentry", "--host", "sentry.io", "--header", "Authorization: Bearer {{token}}", "--json")...)
	if err != nil || json.Unmarshal([]byte(out), &stored) != nil || stored.Name != "sentry" || strings.Join(stored.Hosts, ",") != "sentry.io" {
		t.Errorf("grant add --json: %v %+v\n%s", err, stored, out)
	}
	var revoked struct {
		Name    string `json:"name"`
		Revoked bool   `json:"revoked"`
	}
	decode([]string{"revoke", "--json", "github"}, "", &revoked)
	if revoked.Name != "github" || !revoked.Revoked {
		t.Errorf("revoke --json: %+v", revoked)
	}
	if _, err := runCLI(t, "", append(h, "revoke", "--json", "github")...); err == nil {
		t.Error("revoking a grant twice succeeded")
	}
}
