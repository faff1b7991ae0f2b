package grant

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const token = "ghp_TESTtoken0123456789abcdefXYZ"

func github(t *testing.T) Grant {
	t.Helper()
	p, ok := ProviderNamed("github")
	if !ok {
		t.Fatal("no github provider")
	}
	return Grant{Name: p.Name, Kind: p.Name, Rules: p.Rules}
}

func custom(name string, hosts ...string) Grant {
	g := Grant{Name: name, Kind: Custom}
	for _, h := range hosts {
		g.Rules = append(g.Rules, Rule{Host: h, Headers: []Header{{Name: "Authorization", Template: "Bearer {{token}}"}}})
	}
	return g
}

func newStore(t *testing.T) *Store {
	t.Helper()
	t.Setenv(keyEnv, "")
	os.Unsetenv(keyEnv)
	return Open(t.TempDir())
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	s := newStore(t)
	if gs, err := s.List(); err != nil || len(gs) != 0 {
		t.Fatalf("empty store: %v %v", gs, err)
	}
	if _, err := os.Stat(s.keyPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key exists before the first grant: %v", err)
	}
	if err := s.Put(github(t), token+"\n"); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(custom("sentry", "Sentry.IO"), "sntrys_abc\r\n"); err != nil {
		t.Fatal(err)
	}
	gs, err := s.List()
	if err != nil || len(gs) != 2 || gs[0].Name != "github" || gs[1].Name != "sentry" {
		t.Fatalf("list: %+v %v", gs, err)
	}
	if got := Hosts(gs[0]); !reflect.DeepEqual(got, []string{"api.github.com", "uploads.github.com", "github.com"}) {
		t.Errorf("github hosts: %v", got)
	}
	if got := Hosts(gs[1]); !reflect.DeepEqual(got, []string{"sentry.io"}) {
		t.Errorf("hosts are not lower-cased: %v", got)
	}
	if gs[0].Created.IsZero() {
		t.Error("no created time")
	}
	res, err := s.Resolve([]string{"github", "sentry", "github"})
	if err != nil {
		t.Fatal(err)
	}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-access-token:"+token))
	want := []Resolved{
		{"github", "api.github.com", map[string]string{"Authorization": "Bearer " + token}},
		{"github", "uploads.github.com", map[string]string{"Authorization": "Bearer " + token}},
		{"github", "github.com", map[string]string{"Authorization": basic}},
		{"sentry", "sentry.io", map[string]string{"Authorization": "Bearer sntrys_abc"}},
	}
	if !reflect.DeepEqual(res, want) {
		t.Errorf("resolve:\n got %+v\nwant %+v", res, want)
	}
	for path, mode := range map[string]os.FileMode{s.Path(): 0o600, s.keyPath(): 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v", path, fi.Mode(), err)
		}
	}
	if k := read(t, s.keyPath()); len(k) != 65 || k[64] != '\n' {
		t.Errorf("key file is not 64 hex digits and a newline: %d bytes", len(k))
	}
	// Replacing keeps one entry, with the new token.
	if err := s.Put(github(t), "ghp_other"); err != nil {
		t.Fatal(err)
	}
	res, err = s.Resolve([]string{"github"})
	if err != nil || res[0].Headers["Authorization"] != "Bearer ghp_other" {
		t.Fatalf("replaced: %+v %v", res, err)
	}
	if err := s.Remove("github"); err != nil {
		t.Fatal(err)
	}
	var nf *NotFoundError
	if err := s.Remove("github"); !errors.As(err, &nf) || !strings.Contains(err.Error(), "moatc grant list") {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := s.Resolve([]string{"github"}); !errors.As(err, &nf) || !strings.Contains(err.Error(), "`moatc grant github`") {
		t.Fatalf("resolve after remove: %v", err)
	}
	if _, err := s.Resolve([]string{"jira"}); !errors.As(err, &nf) || !strings.Contains(err.Error(), "moatc grant add jira --host") {
		t.Fatalf("resolve unknown custom: %v", err)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestStoreHoldsNoToken(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	b := read(t, s.Path())
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))
	for _, secret := range []string{token, token[4:20], base64.StdEncoding.EncodeToString([]byte(token)), basic, hex.EncodeToString([]byte(token))} {
		if bytes.Contains(b, []byte(secret)) {
			t.Errorf("grants.json holds %q:\n%s", secret, b)
		}
	}
	var raw struct{ Grants map[string]map[string]any }
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if _, ok := raw.Grants["github"]["sealed"]; !ok {
		t.Errorf("no sealed token: %s", b)
	}
	// Nor does what List gives the CLI.
	gs, _ := s.List()
	out, _ := json.Marshal(gs)
	if bytes.Contains(out, []byte(token)) || bytes.Contains(out, []byte("sealed")) || bytes.Contains(out, []byte("nonce")) {
		t.Errorf("List exposes the token: %s", out)
	}
}

// unchanged fails the test when the files differ from before.
func unchanged(t *testing.T, before map[string][]byte) {
	t.Helper()
	for path, b := range before {
		now, err := os.ReadFile(path)
		if b == nil {
			if !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s was made", path)
			}
			continue
		}
		if err != nil || !bytes.Equal(now, b) {
			t.Errorf("%s changed: %v\n%s", path, err, now)
		}
	}
}

func TestWrongKey(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	other := make([]byte, 32)
	other[0] = 1
	os.WriteFile(s.keyPath(), []byte(hex.EncodeToString(other)+"\n"), 0o600)
	before := map[string][]byte{s.Path(): read(t, s.Path()), s.keyPath(): read(t, s.keyPath())}
	var ce *CorruptError
	if _, err := s.List(); !errors.As(err, &ce) || !strings.Contains(err.Error(), "cannot open") || !strings.Contains(err.Error(), s.Path()) {
		t.Fatalf("list with the wrong key: %v", err)
	}
	if err := s.Put(custom("x", "x.example"), "t"); !errors.As(err, &ce) {
		t.Fatalf("put with the wrong key: %v", err)
	}
	if err := s.Remove("github"); !errors.As(err, &ce) {
		t.Fatalf("remove with the wrong key: %v", err)
	}
	if err := s.Check(); !errors.As(err, &ce) {
		t.Fatalf("check with the wrong key: %v", err)
	}
	unchanged(t, before)
}

func TestCorruptStore(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	good := string(read(t, s.Path()))
	var sf storeFile
	json.Unmarshal([]byte(good), &sf)
	sealed := base64.StdEncoding.EncodeToString(sf.Grants["github"].Sealed)
	flipped := []byte(sealed)
	flipped[3] ^= 1
	for name, c := range map[string]struct {
		text string
		mode os.FileMode
	}{
		"garbage":            {"{not json", 0o600},
		"truncated":          {good[:len(good)-10], 0o600},
		"trailing data":      {good + "{}", 0o600},
		"other version":      {strings.Replace(good, `"version": 1`, `"version": 2`, 1), 0o600},
		"unknown field":      {strings.Replace(good, `"version": 1`, `"version": 1, "plain": "x"`, 1), 0o600},
		"name mismatch":      {strings.Replace(good, `"name": "github"`, `"name": "gitlab"`, 1), 0o600},
		"host moved":         {strings.Replace(good, `"host": "api.github.com"`, `"host": "evil.example"`, 1), 0o600},
		"bad host":           {strings.Replace(good, `"host": "api.github.com"`, `"host": "a b"`, 1), 0o600},
		"ciphertext altered": {strings.Replace(good, sealed, string(flipped), 1), 0o600},
		"writable by group":  {good, 0o620},
		"writable by others": {good, 0o606},
		"short nonce":        {strings.Replace(good, base64.StdEncoding.EncodeToString(sf.Grants["github"].Nonce), "AAAA", 1), 0o600},
		"two placeholders":   {strings.Replace(good, `Bearer {{token}}`, `Bearer {{token}}{{token}}`, 1), 0o600},
	} {
		t.Run(name, func(t *testing.T) {
			if c.text == good && c.mode == 0o600 {
				t.Fatal("case does not change the store")
			}
			os.WriteFile(s.Path(), []byte(c.text), 0o600)
			os.Chmod(s.Path(), c.mode)
			before := map[string][]byte{s.Path(): read(t, s.Path()), s.keyPath(): read(t, s.keyPath())}
			var ce *CorruptError
			if _, err := s.List(); !errors.As(err, &ce) || !strings.Contains(err.Error(), s.Path()) || !strings.Contains(err.Error(), "rm "+s.Path()) {
				t.Fatalf("list: %v", err)
			}
			if err := s.Put(custom("other", "x.example"), "t"); !errors.As(err, &ce) {
				t.Fatalf("put over a corrupt store: %v", err)
			}
			if _, err := s.Resolve([]string{"github"}); !errors.As(err, &ce) {
				t.Fatalf("resolve: %v", err)
			}
			if err := s.Check(); !errors.As(err, &ce) {
				t.Fatalf("check: %v", err)
			}
			unchanged(t, before)
		})
	}
	// The store as written reads (so each case above fails for its defect).
	os.WriteFile(s.Path(), []byte(good), 0o600)
	os.Chmod(s.Path(), 0o600)
	if _, err := s.List(); err != nil {
		t.Fatal(err)
	}
}

func TestSwappedCiphertextsDoNotOpen(t *testing.T) {
	s := newStore(t)
	if err := s.Put(custom("a", "a.example"), "token-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(custom("b", "b.example"), "token-b"); err != nil {
		t.Fatal(err)
	}
	var sf storeFile
	json.Unmarshal(read(t, s.Path()), &sf)
	a, b := sf.Grants["a"], sf.Grants["b"]
	a.Nonce, b.Nonce = b.Nonce, a.Nonce
	a.Sealed, b.Sealed = b.Sealed, a.Sealed
	out, _ := json.Marshal(sf)
	os.WriteFile(s.Path(), out, 0o600)
	var ce *CorruptError
	if _, err := s.Resolve([]string{"a"}); !errors.As(err, &ce) || !strings.Contains(err.Error(), "grant a") {
		t.Fatalf("swapped entries: %v", err)
	}
}

func TestMissingKeyWithGrants(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	os.Remove(s.keyPath())
	before := map[string][]byte{s.Path(): read(t, s.Path()), s.keyPath(): nil}
	var ce *CorruptError
	for what, err := range map[string]error{
		"list":   func() error { _, err := s.List(); return err }(),
		"put":    s.Put(github(t), token),
		"other":  s.Put(custom("x", "x.example"), "t"),
		"remove": s.Remove("github"),
		"check":  s.Check(),
	} {
		if !errors.As(err, &ce) || ce.Path != s.keyPath() {
			t.Errorf("%s: %v", what, err)
			continue
		}
		for _, want := range []string{s.keyPath(), "restore", keyEnv, "rm " + s.Path()} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: message lacks %q: %v", what, want, err)
			}
		}
	}
	unchanged(t, before)
	// Once the grants are gone, a new key is fine.
	os.Remove(s.Path())
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
}

func TestKeyFile(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	os.Chmod(s.keyPath(), 0o640)
	var ce *CorruptError
	if _, err := s.List(); !errors.As(err, &ce) || !strings.Contains(err.Error(), "chmod 600 "+s.keyPath()) {
		t.Fatalf("key readable by group: %v", err)
	}
	os.Chmod(s.keyPath(), 0o600)
	os.WriteFile(s.keyPath(), []byte("not a key\n"), 0o600)
	if _, err := s.List(); !errors.As(err, &ce) || !strings.Contains(err.Error(), "64 hex digits") {
		t.Fatalf("garbage key: %v", err)
	}
	// An empty store with a bad key: Check says so before the first grant would.
	os.Remove(s.Path())
	if err := s.Check(); !errors.As(err, &ce) {
		t.Fatalf("check, bad key, no grants: %v", err)
	}
}

func TestKeyFromEnvironment(t *testing.T) {
	home := t.TempDir()
	s := Open(home)
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	t.Setenv(keyEnv, hex.EncodeToString(key))
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(s.keyPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a key file was made with %s set: %v", keyEnv, err)
	}
	// The same key in base64 opens it.
	t.Setenv(keyEnv, base64.StdEncoding.EncodeToString(key))
	if res, err := s.Resolve([]string{"github"}); err != nil || res[0].Headers["Authorization"] != "Bearer "+token {
		t.Fatalf("base64 key: %+v %v", res, err)
	}
	// Another key does not, and the store is left alone.
	before := map[string][]byte{s.Path(): read(t, s.Path()), s.keyPath(): nil}
	key[0] ^= 1
	t.Setenv(keyEnv, hex.EncodeToString(key))
	var ce *CorruptError
	if _, err := s.List(); !errors.As(err, &ce) || !strings.Contains(err.Error(), keyEnv) {
		t.Fatalf("wrong key in %s: %v", keyEnv, err)
	}
	for _, bad := range []string{" ", "abc", strings.Repeat("zz", 32), base64.StdEncoding.EncodeToString(key[:16])} {
		t.Setenv(keyEnv, bad)
		if err := s.Put(custom("x", "x.example"), "t"); err == nil || !strings.Contains(err.Error(), keyEnv+" is set but is not a grant key") {
			t.Errorf("%s=%q: %v", keyEnv, bad, err)
		}
		if err := s.Check(); err == nil {
			t.Errorf("check with %s=%q passed", keyEnv, bad)
		}
	}
	unchanged(t, before)
}

func TestConcurrentPutKeepsEveryGrant(t *testing.T) {
	s := newStore(t)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if err := s.Put(custom(fmt.Sprintf("g%d", i), "x.example"), fmt.Sprintf("token%d", i)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	gs, err := s.List()
	if err != nil || len(gs) != 20 {
		t.Fatalf("%d grants, %v", len(gs), err)
	}
}

// TestMain doubles as the child process of TestConcurrentProcesses: with GRANT_TEST_HOME
// set, it stores five grants and exits.
func TestMain(m *testing.M) {
	if home := os.Getenv("GRANT_TEST_HOME"); home != "" {
		name := os.Getenv("GRANT_TEST_NAME")
		for i := range 5 {
			if err := Open(home).Put(custom(fmt.Sprintf("%s-%d", name, i), "x.example"), "t"+name); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestConcurrentProcesses(t *testing.T) {
	s := newStore(t)
	var cmds []*exec.Cmd
	for i := range 6 {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "GRANT_TEST_HOME="+filepath.Dir(s.Path()), fmt.Sprintf("GRANT_TEST_NAME=p%d", i))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("helper: %v", err)
		}
	}
	gs, err := s.List()
	if err != nil || len(gs) != 30 {
		t.Fatalf("%d grants from 6 processes of 5, %v", len(gs), err)
	}
}

func TestValidation(t *testing.T) {
	s := newStore(t)
	bad := func(g Grant, tok, want string) {
		t.Helper()
		err := s.Put(g, tok)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error with %q, got %v", want, err)
		}
		if err != nil && len(tok) > 3 && strings.Contains(err.Error(), tok) {
			t.Errorf("the error repeats the token: %v", err)
		}
	}
	ok := custom("api", "api.example.com")
	bad(ok, "", "empty")
	bad(ok, "\n", "empty")
	bad(ok, "abc\ndef", "line break")
	bad(ok, "abc\r\ndef", "line break")
	bad(ok, "abc\x00def", "control character")
	bad(ok, "Bearer abcdef", "space")
	bad(ok, "abc\tdef", "space")
	bad(ok, "abc\u00a0def", "non-ASCII")
	bad(ok, strings.Repeat("a", MaxToken+1), "more than")
	for _, name := range []string{"", "Api", "-api", "a/b", "a b", strings.Repeat("a", 64)} {
		bad(custom(name, "api.example.com"), "t", "not a grant name")
	}
	bad(custom("github", "api.example.com"), "t", "kept for the GitHub token")
	bad(Grant{Name: "x", Kind: "gitlab", Rules: ok.Rules}, "t", "kind")
	bad(custom("x"), "t", "no host")
	bad(custom("x", "a.example", "A.example"), "t", "twice")
	for host, want := range map[string]string{
		"":                        "empty",
		"https://api.example.com": "URL",
		"api.example.com:443":     "port",
		"*.example.com":           "wildcard",
		"api..example.com":        "not a host name",
		"api.example.com.":        "not a host name",
		"api example.com":         "not a host name",
		"ex\r\nample.com":         "not a host name",
	} {
		bad(custom("x", host), "t", want)
	}
	header := func(name, tmpl string) Grant {
		return Grant{Name: "x", Kind: Custom, Rules: []Rule{{Host: "api.example.com", Headers: []Header{{Name: name, Template: tmpl}}}}}
	}
	bad(header("Authorization", "Bearer abc"), "t", "0 placeholders")
	bad(header("Authorization", "{{token}} {{token}}"), "t", "2 placeholders")
	bad(header("Authorization", "Bearer {{tok}}"), "t", "unknown placeholder")
	bad(header("Authorization", "Bearer {{token"), "t", "unclosed")
	bad(header("Authorization", "Basic {{basic:}}"), "t", "basic-auth user")
	bad(header("Authorization", "Basic {{basic:a:b}}"), "t", "basic-auth user")
	bad(header("Authorization", "Bearer {{token}}\r\nX-Evil: 1"), "t", "line break")
	bad(header("Auth orization", "{{token}}"), "t", "header name")
	bad(header("Auth:", "{{token}}"), "t", "header name")
	bad(header("", "{{token}}"), "t", "no name")
	bad(Grant{Name: "x", Kind: Custom, Rules: []Rule{{Host: "a.example"}}}, "t", "no header")
	bad(Grant{Name: "x", Kind: Custom, Rules: []Rule{{Host: "a.example", Headers: []Header{{"A", "{{token}}"}, {"a", "{{token}}"}}}}}, "t", "twice")
	// None of these left a store or a key behind.
	for _, p := range []string{s.Path(), s.keyPath()} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after refused grants", p)
		}
	}
	// And these are fine.
	for _, g := range []Grant{
		custom("a.b_c-1", "127.0.0.1", "my_host.internal", "localhost"),
		header("X-Api-Key", "{{token}}"),
		{Name: "github-work", Kind: "github", Rules: github(t).Rules},
	} {
		if err := s.Put(g, strings.Repeat("a", MaxToken)+"\n"); err != nil {
			t.Errorf("%+v: %v", g, err)
		}
	}
	if err := s.Put(custom("v6", "[::1]"), "t"); err != nil {
		t.Fatal(err)
	}
	if res, err := s.Resolve([]string{"v6"}); err != nil || res[0].Host != "::1" {
		t.Errorf("IPv6 host: %+v %v", res, err)
	}
}

func TestResolveRefusesTwoGrantsForOneHeader(t *testing.T) {
	s := newStore(t)
	if err := s.Put(github(t), token); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(custom("gh2", "api.github.com"), "other"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Resolve([]string{"github", "gh2"}); err == nil || !strings.Contains(err.Error(), "both set Authorization for api.github.com") {
		t.Fatalf("two grants for one header: %v", err)
	}
	if _, err := s.Resolve([]string{"Bad Name"}); err == nil {
		t.Fatal("bad name resolved")
	}
}

func TestProvidersAreCopies(t *testing.T) {
	p, _ := ProviderNamed("openai")
	p.Rules[0].Host = "evil.example"
	p.Rules[0].Headers[0].Template = "x"
	q, _ := ProviderNamed("openai")
	if q.Rules[0].Host != "api.openai.com" || q.Rules[0].Headers[0].Template != "Bearer {{token}}" {
		t.Fatalf("provider changed through a copy: %+v", q)
	}
	names := []string{}
	for _, p := range Providers() {
		names = append(names, p.Name)
		if _, err := normalize(Grant{Name: p.Name, Kind: p.Name, Rules: p.Rules}); err != nil {
			t.Errorf("provider %s: %v", p.Name, err)
		}
	}
	if !reflect.DeepEqual(names, []string{"anthropic", "github", "google", "openai"}) {
		t.Errorf("providers: %v", names)
	}
}
