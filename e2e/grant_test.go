package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// These drive the real binary against a home of their own; they need no containers.

type grantRecord struct {
	Name  string   `json:"name"`
	Kind  string   `json:"kind"`
	Hosts []string `json:"hosts"`
	Rules []struct {
		Host    string `json:"host"`
		Headers []struct {
			Name     string `json:"name"`
			Template string `json:"template"`
		} `json:"headers"`
	} `json:"rules"`
}

// grantHome gives the test its own MOATC_HOME, without a grant key from the environment.
func grantHome(t *testing.T) (string, []string) {
	t.Helper()
	h := t.TempDir()
	return h, []string{"MOATC_HOME=" + h, "MOATC_GRANT_KEY=", "GITHUB_TOKEN=", "GH_TOKEN=", "ANTHROPIC_API_KEY=", "OPENAI_API_KEY="}
}

// noSecret fails the test if the token, or the forms the proxy sends it in, is in s.
func noSecret(t *testing.T, where, s, token string) {
	t.Helper()
	for _, v := range []string{token, base64.StdEncoding.EncodeToString([]byte(token)), base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))} {
		if strings.Contains(s, v) {
			t.Errorf("%s holds the token (as %q):\n%s", where, v, s)
		}
	}
}

func grantList(t *testing.T, env []string) []grantRecord {
	t.Helper()
	r := moatcRun(t, opts{env: env}, "grant", "list", "--json")
	var gs []grantRecord
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &gs) != nil {
		t.Fatalf("grant list --json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	return gs
}

func TestGrantLifecycle(t *testing.T) {
	h, env := grantHome(t)
	const piped, fromEnv = "ghp_E2EpipedTOKEN0123456789", "sk-ant-E2EenvTOKEN0123456789"
	// The exact shape the help teaches: printf %s "$TOKEN" | moatc grant github.
	r := moatcRun(t, opts{env: env, stdin: piped}, "grant", "github")
	if r.code != 0 || !strings.Contains(r.stdout, "api.github.com") || !strings.Contains(r.stdout, "github.com") {
		t.Fatalf("grant github from stdin: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	noSecret(t, "grant github's output", r.stdout+r.stderr, piped)
	// From the provider's variable when stdin is empty, saying which variable it used.
	r = moatcRun(t, opts{env: append(env, "ANTHROPIC_API_KEY="+fromEnv)}, "grant", "anthropic", "--json")
	var stored grantRecord
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &stored) != nil || stored.Name != "anthropic" || !slices.Equal(stored.Hosts, []string{"api.anthropic.com"}) {
		t.Fatalf("grant anthropic from the environment: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, "ANTHROPIC_API_KEY") {
		t.Errorf("grant anthropic does not say it read ANTHROPIC_API_KEY: %q", r.stderr)
	}
	noSecret(t, "grant anthropic's output", r.stdout+r.stderr, fromEnv)
	// Any API, with flags after the name as the help writes them; the token from --token-env.
	r = moatcRun(t, opts{env: append(env, "SENTRY_TOKEN=sntrys_E2Etoken")}, "grant", "add", "sentry",
		"--host", "Sentry.io,de.sentry.io", "--header", "Authorization: Bearer {{token}}", "--token-env", "SENTRY_TOKEN")
	if r.code != 0 {
		t.Fatalf("grant add: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	gs := grantList(t, env)
	var names []string
	for _, g := range gs {
		names = append(names, g.Name)
	}
	if !slices.Equal(names, []string{"anthropic", "github", "sentry"}) {
		t.Fatalf("grant list: %v", names)
	}
	if gs[1].Kind != "github" || !slices.Equal(gs[1].Hosts, []string{"api.github.com", "uploads.github.com", "github.com"}) ||
		gs[1].Rules[2].Headers[0].Template != "Basic {{basic:x-access-token}}" {
		t.Errorf("github grant: %+v", gs[1])
	}
	if gs[2].Kind != "custom" || !slices.Equal(gs[2].Hosts, []string{"sentry.io", "de.sentry.io"}) {
		t.Errorf("sentry grant: %+v", gs[2])
	}
	table := moatcRun(t, opts{env: env}, "grant", "list")
	if table.code != 0 || !strings.Contains(table.stdout, "NAME") || !strings.Contains(table.stdout, "sentry.io,de.sentry.io") {
		t.Errorf("grant list: exit %d\n%s%s", table.code, table.stdout, table.stderr)
	}

	// No token in the store, in any listing, or anywhere in the home.
	entries, _ := os.ReadDir(h)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(h, e.Name()))
		for _, tok := range []string{piped, fromEnv, "sntrys_E2Etoken"} {
			noSecret(t, e.Name(), string(b), tok)
		}
	}
	for _, f := range []string{"grants.json", "grants.key"} {
		if fi, err := os.Stat(filepath.Join(h, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	for _, tok := range []string{piped, fromEnv, "sntrys_E2Etoken"} {
		noSecret(t, "grant list", table.stdout, tok)
	}

	// Revoke, then revoke again.
	if r := moatcRun(t, opts{env: env}, "revoke", "github"); r.code != 0 {
		t.Fatalf("revoke github: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	if gs := grantList(t, env); len(gs) != 2 || gs[0].Name != "anthropic" || gs[1].Name != "sentry" {
		t.Errorf("after revoke: %+v", gs)
	}
	r = moatcRun(t, opts{env: env}, "revoke", "github")
	if r.code != 125 || !strings.Contains(r.stderr, "moatc grant list") {
		t.Errorf("revoke unknown: exit %d %q", r.code, r.stderr)
	}
}

func TestGrantRefusesTokenInArgv(t *testing.T) {
	h, env := grantHome(t)
	const tok = "ghp_ARGVtokenMustNotEcho42"
	for _, args := range [][]string{
		{"grant", "github", tok},
		{"grant", "github", "--json", tok},
		{"grant", "github", tok, "--json"},
		{"grant", tok},
		{"grant", "add", "api", "--host", "api.example.com", "--header", "Authorization: Bearer {{token}}", tok},
	} {
		r := moatcRun(t, opts{env: env, stdin: "ghp_fromstdin"}, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "shell history") {
			t.Errorf("%v: exit %d %q", args[:2], r.code, r.stderr)
		}
		noSecret(t, "the refusal", r.stdout+r.stderr, tok)
	}
	// A token typed into the header template is refused without being repeated either.
	r := moatcRun(t, opts{env: env, stdin: "x"}, "grant", "add", "api", "--host", "api.example.com", "--header", "Authorization: Bearer "+tok)
	if r.code != 2 || !strings.Contains(r.stderr, "{{token}}") {
		t.Errorf("literal token in the template: exit %d %q", r.code, r.stderr)
	}
	noSecret(t, "the template refusal", r.stdout+r.stderr, tok)
	if _, err := os.Stat(filepath.Join(h, "grants.json")); err == nil {
		t.Error("a refused grant was stored")
	}
	// Nothing on stdin and no variable: it says how to give the token.
	r = moatcRun(t, opts{env: env}, "grant", "openai")
	if r.code != 125 || !strings.Contains(r.stderr, "OPENAI_API_KEY") || !strings.Contains(r.stderr, "moatc grant openai") {
		t.Errorf("no token anywhere: exit %d %q", r.code, r.stderr)
	}
	// A token with a line break in the middle would split the header.
	r = moatcRun(t, opts{env: env, stdin: "abc\r\nX-Injected: 1"}, "grant", "openai")
	if r.code != 125 || !strings.Contains(r.stderr, "line break") {
		t.Errorf("token with a line break: exit %d %q", r.code, r.stderr)
	}
}

func TestGrantCorruptStore(t *testing.T) {
	h, env := grantHome(t)
	if r := moatcRun(t, opts{env: env, stdin: "sk-CORRUPTtest\n"}, "grant", "openai"); r.code != 0 {
		t.Fatalf("grant openai: exit %d %s", r.code, r.stderr)
	}
	store := filepath.Join(h, "grants.json")
	os.WriteFile(store, []byte(`{"version": 1, "grants": {`), 0o600)
	for _, args := range [][]string{{"grant", "list"}, {"revoke", "openai"}, {"grant", "anthropic"}} {
		r := moatcRun(t, opts{env: env, stdin: "sk-other"}, args...)
		if r.code != 125 || !strings.Contains(r.stderr, store) || !strings.Contains(r.stderr, "rm "+store) {
			t.Errorf("%v on a corrupt store: exit %d %q", args, r.code, r.stderr)
		}
	}
	if b, _ := os.ReadFile(store); string(b) != `{"version": 1, "grants": {` {
		t.Errorf("the corrupt store was overwritten: %s", b)
	}
	// The key gone while grants remain: no new key is made over them.
	os.Remove(store)
	if r := moatcRun(t, opts{env: env, stdin: "sk-again"}, "grant", "openai"); r.code != 0 {
		t.Fatalf("grant openai: exit %d %s", r.code, r.stderr)
	}
	key := filepath.Join(h, "grants.key")
	os.Remove(key)
	r := moatcRun(t, opts{env: env, stdin: "sk-new"}, "grant", "anthropic")
	if r.code != 125 || !strings.Contains(r.stderr, key) || !strings.Contains(r.stderr, "MOATC_GRANT_KEY") {
		t.Errorf("missing key: exit %d %q", r.code, r.stderr)
	}
	if _, err := os.Stat(key); err == nil {
		t.Error("a new key was made over existing grants")
	}
}

func TestGrantKeyFromEnvironment(t *testing.T) {
	h, env := grantHome(t)
	env = append(env, "MOATC_GRANT_KEY="+strings.Repeat("ab", 32))
	if r := moatcRun(t, opts{env: env, stdin: "sk-ENVKEYtest"}, "grant", "openai"); r.code != 0 {
		t.Fatalf("grant openai: exit %d %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(h, "grants.key")); err == nil {
		t.Error("a key file was made though MOATC_GRANT_KEY is set")
	}
	if gs := grantList(t, env); len(gs) != 1 {
		t.Errorf("list: %+v", gs)
	}
	// Another key cannot open it.
	other := append(env[:len(env):len(env)], "MOATC_GRANT_KEY="+strings.Repeat("cd", 32))
	if r := moatcRun(t, opts{env: other}, "grant", "list"); r.code != 125 || !strings.Contains(r.stderr, "cannot open") {
		t.Errorf("list with another key: exit %d %q", r.code, r.stderr)
	}
}
