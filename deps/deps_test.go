package deps

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

// entries makes a list as if written on consecutive lines of moatc.yaml, starting at line 3.
func entries(texts ...string) []Entry {
	var out []Entry
	for i, t := range texts {
		out = append(out, Entry{Text: t, File: "moatc.yaml", Line: i + 3})
	}
	return out
}

func plan(t *testing.T, texts ...string) *Plan {
	t.Helper()
	ds, err := Parse(entries(texts...))
	if err != nil {
		t.Fatalf("Parse(%q): %v", texts, err)
	}
	p, err := Resolve(ds)
	if err != nil {
		t.Fatalf("Resolve(%q): %v", texts, err)
	}
	return p
}

func TestEmbeddedRegistryIsValid(t *testing.T) {
	if _, err := NewRegistry(registryYAML); err != nil {
		t.Fatal(err)
	}
	want := []string{"git", "curl", "jq", "make", "build-essential", "ripgrep", "node", "python", "go", "typescript", "esbuild", "essentials", "docker"}
	for _, n := range want {
		i, err := Lookup(n)
		if err != nil {
			t.Errorf("Lookup(%q): %v", n, err)
			continue
		}
		if i.Description == "" || i.Source == "" {
			t.Errorf("%s: description %q, source %q", n, i.Description, i.Source)
		}
	}
	list := List()
	for k := 1; k < len(list); k++ {
		if list[k-1].Name >= list[k].Name {
			t.Fatalf("List not sorted: %s before %s", list[k-1].Name, list[k].Name)
		}
	}
	node, _ := Lookup("node")
	if got := strings.Join(node.VersionNames(), ","); got != "20,22,24" || node.Default != "24" {
		t.Errorf("node versions %s default %s", got, node.Default)
	}
	ts, _ := Lookup("typescript")
	if ts.Kind != KindNPM || ts.NPM != "typescript" || strings.Join(ts.Requires, ",") != "node" {
		t.Errorf("typescript: %+v", ts)
	}
}

func TestLookupUnknownSuggests(t *testing.T) {
	_, err := Lookup("nodejs")
	var e *Error
	if !errors.As(err, &e) || e.Code != ErrUnknown || len(e.Suggestions) == 0 || e.Suggestions[0] != "node" {
		t.Fatalf("Lookup(nodejs) = %v", err)
	}
}

func TestParseForms(t *testing.T) {
	for _, c := range []struct {
		text, canonical string
		kind            Kind
		name, version   string
	}{
		{"git", "git", KindApt, "git", ""},
		{" jq ", "jq", KindApt, "jq", ""},
		{"node@22", "node@22", KindRuntime, "node", "22"},
		{"node@22.23.3", "node@22.23.3", KindRuntime, "node", "22.23.3"},
		{"go@1.26", "go@1.26", KindRuntime, "go", "1.26"},
		{"esbuild@0.28.2", "esbuild@0.28.2", KindBinary, "esbuild", "0.28.2"},
		{"typescript@5.9.2", "typescript@5.9.2", KindNPM, "typescript", "5.9.2"},
		{"npm:typescript", "npm:typescript", KindNPM, "typescript", ""},
		{"npm:@anthropic-ai/claude-code@^2.1", "npm:@anthropic-ai/claude-code@^2.1", KindNPM, "@anthropic-ai/claude-code", "^2.1"},
		{"pip:requests@2.32.3", "pip:requests@2.32.3", KindPip, "requests", "2.32.3"},
		{"go:golang.org/x/tools/cmd/stringer@latest", "go:golang.org/x/tools/cmd/stringer@latest", KindGo, "golang.org/x/tools/cmd/stringer", "latest"},
		{"go:honnef.co/go/tools/cmd/staticcheck@v0.6.1", "go:honnef.co/go/tools/cmd/staticcheck@v0.6.1", KindGo, "honnef.co/go/tools/cmd/staticcheck", "v0.6.1"},
		{"apt:python3-requests", "apt:python3-requests", KindApt, "python3-requests", ""},
		{"docker:host", "docker:host", KindDocker, "docker", "host"},
		{"docker:dind", "docker:dind", KindDocker, "docker", "dind"},
		{"essentials", "essentials", KindMeta, "essentials", ""},
	} {
		ds, err := Parse(entries(c.text))
		if err != nil {
			t.Errorf("Parse(%q): %v", c.text, err)
			continue
		}
		d := ds[0]
		if d.String() != c.canonical || d.Kind != c.kind || d.Name != c.name || d.Version != c.version {
			t.Errorf("Parse(%q) = %s kind %s name %q version %q; want %s %s %q %q", c.text, d, d.Kind, d.Name, d.Version, c.canonical, c.kind, c.name, c.version)
		}
		if d.Entry.Line != 3 {
			t.Errorf("Parse(%q): entry line %d", c.text, d.Entry.Line)
		}
	}
}

func TestParseErrors(t *testing.T) {
	for _, c := range []struct {
		text string
		code Code
		want []string // substrings of the message
	}{
		{"", ErrSyntax, []string{"empty"}},
		{"docker", ErrUnsupported, []string{"docker:host", "docker:dind", "shared by docker:host runs", "the run's alone", "moatc trust"}},
		{"docker:yes", ErrSyntax, []string{"host or dind"}},
		{"docker@host", ErrSyntax, []string{"docker:host"}},
		{"jqq", ErrUnknown, []string{`did you mean "jq"`, "moatc deps list", "apt:NAME"}},
		{"nodejs", ErrUnknown, []string{`did you mean "node"`}},
		{"typscript", ErrUnknown, []string{`"typescript"`}},
		{"golang.org/x/tools/gopls", ErrSyntax, []string{"not a dependency name"}},
		{"zzzzzz", ErrUnknown, []string{"unknown dependency \"zzzzzz\"", "moatc deps list"}},
		{"node@19", ErrVersion, []string{"node has no version 19", "20 (20.20.2)", "22 (22.23.3)", "24 (24.21.0) [default]"}},
		{"node@22.1", ErrVersion, []string{"no version 22.1"}},
		{"go@1.25", ErrVersion, []string{"go has no version 1.25", "1.26 (1.26.11)", "1.27 (1.27.4)"}},
		{"node@v22", ErrSyntax, []string{`bad version "v22"`}},
		{"node@lts", ErrSyntax, []string{`bad version "lts"`}},
		{"node@", ErrSyntax, []string{"nothing after '@'"}},
		{"node@22@1", ErrSyntax, []string{"more than one '@'"}},
		{"python@3.12", ErrVersion, []string{"python has no version 3.12", "3.11"}},
		{"jq@1.7", ErrVersion, []string{"Debian", `remove "@1.7"`}},
		{"essentials@1", ErrVersion, []string{"bundle"}},
		{"apt:jq@1.6", ErrVersion, []string{"Debian"}},
		{"cargo:ripgrep", ErrSyntax, []string{`unknown prefix "cargo:"`, "npm:", "pip:"}},
		{"npm:Type Script", ErrSyntax, []string{"white space"}},
		{"npm:typescript@$(reboot)", ErrSyntax, []string{"bad version"}},
		{"npm:Bad_Name", ErrSyntax, []string{"not an npm package name"}},
		{"npm:typescript@", ErrSyntax, []string{"nothing after '@'"}},
		{"go:stringer", ErrSyntax, []string{"not a Go package path"}},
		{"go:golang.org/x/tools/cmd/stringer@1.2.3", ErrSyntax, []string{"bad version", "v0.31.0"}},
		{"go:golang.org/x/tools/cmd/stringer@v1;true", ErrSyntax, []string{"bad version"}},
		{"pip:requests@>=2", ErrSyntax, []string{"bad version"}},
		{"pip:-e", ErrSyntax, []string{"not a PyPI project name"}},
		{"apt:Bad", ErrSyntax, []string{"not a Debian package name"}},
	} {
		_, err := Parse(entries("git", c.text))
		errs := Errors(err)
		if len(errs) != 1 {
			t.Errorf("Parse(%q): %v; want one error", c.text, err)
			continue
		}
		e := errs[0]
		if e.Code != c.code {
			t.Errorf("Parse(%q): code %s, want %s (%v)", c.text, e.Code, c.code, e)
		}
		if e.Entry().Line != 4 || !strings.HasPrefix(e.Error(), "moatc.yaml:4: ") {
			t.Errorf("Parse(%q): error does not name moatc.yaml:4: %v", c.text, e)
		}
		for _, w := range c.want {
			if !strings.Contains(e.Error(), w) {
				t.Errorf("Parse(%q): %q lacks %q", c.text, e.Error(), w)
			}
		}
	}
}

func TestParseReportsEveryBadEntry(t *testing.T) {
	_, err := Parse(entries("jqq", "git", "node@19", "docker"))
	errs := Errors(err)
	if len(errs) != 3 {
		t.Fatalf("got %d errors, want 3: %v", len(errs), err)
	}
	for k, line := range []int{3, 5, 6} {
		if errs[k].Entry().Line != line {
			t.Errorf("error %d at line %d, want %d: %v", k, errs[k].Entry().Line, line, errs[k])
		}
	}
	var e *Error
	if !errors.As(err, &e) || e.Code != ErrUnknown {
		t.Errorf("errors.As finds %v", e)
	}
}

func TestResolveErrors(t *testing.T) {
	for _, c := range []struct {
		name  string
		texts []string
		code  Code
		lines []int // entries named by the error, in order
		want  []string
	}{
		{"two node versions", []string{"git", "node@20", "jq", "node@22"}, ErrConflict, []int{6, 4},
			[]string{`"node@22" (moatc.yaml:6) conflicts with "node@20" (moatc.yaml:4)`, "one node version", "20.20.2", "22.23.3"}},
		{"two go versions", []string{"go@1.26", "go@1.27.4"}, ErrConflict, []int{4, 3}, []string{"one go version"}},
		{"two docker modes", []string{"docker:host", "docker:dind"}, ErrConflict, []int{4, 3}, []string{"one docker mode"}},
		{"npm package twice", []string{"node", "typescript@5.9.2", "npm:typescript@6.0.0"}, ErrConflict, []int{5, 4},
			[]string{"version of the npm package typescript", "6.0.0", "5.9.2"}},
		{"npm without node", []string{"git", "npm:typescript"}, ErrRequires, []int{4},
			[]string{`npm:typescript needs node, which is not in the list: add "node" (or one of node@20, node@22, node@24)`}},
		{"registry npm without node", []string{"typescript"}, ErrRequires, []int{3}, []string{"typescript needs node"}},
		{"go tool without go", []string{"go:golang.org/x/example/hello@latest"}, ErrRequires, []int{3}, []string{"needs go"}},
		{"registry go tool without go", []string{"gopls"}, ErrRequires, []int{3}, []string{"gopls needs go"}},
		{"pip without an index", []string{"python", "pip:requests"}, ErrUnsupported, []int{4},
			[]string{"PyPI", "cannot reach", "apt:python3-requests"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ds, err := Parse(entries(c.texts...))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Resolve(ds)
			errs := Errors(err)
			if len(errs) != 1 {
				t.Fatalf("Resolve: %v; want one error", err)
			}
			e := errs[0]
			if e.Code != c.code {
				t.Errorf("code %s, want %s: %v", e.Code, c.code, e)
			}
			var lines []int
			for _, en := range e.Entries {
				lines = append(lines, en.Line)
			}
			if len(lines) != len(c.lines) || (len(lines) > 0 && lines[0] != c.lines[0]) || (len(lines) > 1 && lines[1] != c.lines[1]) {
				t.Errorf("entries at lines %v, want %v", lines, c.lines)
			}
			for _, w := range c.want {
				if !strings.Contains(e.Error(), w) {
					t.Errorf("%q lacks %q", e.Error(), w)
				}
			}
		})
	}
}

func TestResolveMergesAndDefaults(t *testing.T) {
	p := plan(t, "node-dev", "node@20", "essentials", "git", "apt:jq", "npm:typescript", "go", "go:golang.org/x/example/hello")
	got := p.String()
	want := "go@1.27.4 node@20.20.2 apt:jq curl fd git jq less procps ripgrep ssh unzip npm:prettier@latest npm:typescript@latest go:golang.org/x/example/hello@latest"
	if got != want {
		t.Errorf("plan\n got %s\nwant %s", got, want)
	}
	for _, it := range p.Items {
		if it.Key == "node" && (len(it.Entries) != 2 || it.Entries[0].Text != "node-dev" || it.Entries[1].Text != "node@20") {
			t.Errorf("node asked for by %+v", it.Entries)
		}
		if it.Key == "npm:typescript" && it.Name() != "typescript" {
			t.Errorf("npm:typescript shown as %q", it.Name())
		}
	}
	// Same version written two ways is no conflict.
	if p := plan(t, "node@22", "node@22.23.3"); p.String() != "node@22.23.3" {
		t.Errorf("node@22 + node@22.23.3 = %s", p)
	}
	if p := plan(t, "docker:host"); p.Docker != "host" {
		t.Errorf("docker:host: Docker = %q", p.Docker)
	}
}

func TestResolvePipWithIndex(t *testing.T) {
	ds, err := Parse(entries("python", "pip:Requests@2.32.3"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Resolve(ds, WithPipIndex("https://pypi.example/simple"))
	if err != nil {
		t.Fatal(err)
	}
	df := string(p.Dockerfile("debian:bookworm-slim"))
	for _, w := range []string{"python3-pip", "--index-url 'https://pypi.example/simple'", "'requests==2.32.3'", "id=moatc-pip,target=/root/.cache/pip"} {
		if !strings.Contains(df, w) {
			t.Errorf("Dockerfile lacks %q:\n%s", w, df)
		}
	}
	if _, err := Resolve(ds, WithPipIndex("file:///x")); err == nil {
		t.Error("a file: pip index was accepted")
	}
}

func TestDockerfileDeterministic(t *testing.T) {
	a := plan(t, "jq", "node@22", "typescript", "go", "go:golang.org/x/example/hello@latest", "esbuild", "essentials")
	// The same list in another order, spelled differently, on other lines.
	ds, err := Parse([]Entry{
		{Text: "essentials", Line: 40}, {Text: "go:golang.org/x/example/hello@latest", Line: 9},
		{Text: "esbuild@0.28"}, {Text: "npm:typescript"}, {Text: "go@1.27"}, {Text: "node@22.23.3"},
		{Text: "apt:jq"}, {Text: "jq"},
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Resolve(ds)
	if err != nil {
		t.Fatal(err)
	}
	da1, da2 := a.Dockerfile("debian:bookworm-slim"), a.Dockerfile("docker.io/library/debian:bookworm-slim")
	if !bytes.Equal(da1, da2) {
		t.Error("the same base spelled two ways gives two Dockerfiles")
	}
	for k := 0; k < 20; k++ { // map iteration order must not leak into the output
		if !bytes.Equal(da1, a.Dockerfile("debian:bookworm-slim")) {
			t.Fatal("Dockerfile differs between calls")
		}
	}
	// apt:jq and jq are different items (the second is a registry entry), but install the
	// same Debian package: the apt line must not repeat it.
	db := b.Dockerfile("debian:bookworm-slim")
	if !strings.Contains(string(db), "--no-install-recommends fd-find git jq less openssh-client procps ripgrep \\\n") {
		t.Errorf("jq installed twice:\n%s", db)
	}
	tag := a.Tag("debian:bookworm-slim")
	if !regexp.MustCompile(`^moatc/run:[0-9a-f]{16}$`).MatchString(tag) {
		t.Errorf("tag %q", tag)
	}
	if a.Tag("debian:bookworm-slim") != tag || a.Tag("docker.io/library/debian:bookworm-slim") != tag {
		t.Error("tag not stable")
	}
	if a.Tag("debian:trixie-slim") == tag {
		t.Error("another base gives the same tag")
	}
	if plan(t, "jq", "node@20", "typescript", "go", "go:golang.org/x/example/hello@latest", "esbuild", "essentials").Tag("debian:bookworm-slim") == tag {
		t.Error("another node version gives the same tag")
	}
	// Positions never reach the bytes: a list moved down the file keeps its tag.
	ds1, _ := Parse(entries("jq", "git"))
	ds2, _ := Parse([]Entry{{Text: "git", File: "other.yaml", Line: 90}, {Text: "jq", Line: 91}})
	p1, _ := Resolve(ds1)
	p2, _ := Resolve(ds2)
	if p1.Tag("busybox") != p2.Tag("busybox") {
		t.Error("line numbers or order change the tag")
	}
}

func TestDockerfileShape(t *testing.T) {
	df := string(plan(t, "jq", "node", "typescript", "go", "go:golang.org/x/example/hello@latest", "esbuild").Dockerfile("debian:bookworm-slim"))
	// Layers from least to most often changed.
	order := []string{
		"FROM docker.io/library/debian:bookworm-slim",
		"useradd --create-home --uid 1000",
		"apt-get install -y -qq --no-install-recommends ca-certificates curl unzip xz-utils",
		"COPY <<'EOF' /usr/local/libexec/moatc-install",
		"# go 1.27.4 (Go module proxy).",
		"# node 24.21.0 (npm registry).",
		"ENV PATH=/usr/local/go/bin:$PATH",
		"apt-get install -y -qq --no-install-recommends jq",
		"# esbuild 0.28.2",
		"npm install --global",
		"go install 'golang.org/x/example/hello@latest'",
		"USER moatc",
	}
	last := -1
	for _, s := range order {
		i := strings.Index(df, s)
		if i < 0 {
			t.Fatalf("Dockerfile lacks %q:\n%s", s, df)
		}
		if i < last {
			t.Errorf("%q comes too early", s)
		}
		last = i
	}
	for _, s := range []string{
		"--mount=type=cache,id=moatc-apt-lists,target=/var/lib/apt/lists,sharing=locked",
		"--mount=type=cache,id=moatc-apt-archives,target=/var/cache/apt,sharing=locked",
		"--mount=type=cache,id=moatc-npm,target=/root/.npm,sharing=locked",
		"--mount=type=cache,id=moatc-go-mod,target=/root/go/pkg/mod,sharing=locked",
		"--mount=type=cache,id=moatc-downloads,target=/var/cache/moatc/downloads,sharing=locked",
		"rm -f /etc/apt/apt.conf.d/docker-clean",
		"7ecd542f86ccbbb5017de33ac529872bc48c71f4edb658d63a18d2206f482b9b", // go 1.27.4's zip
		"checksum mismatch",
	} {
		if !strings.Contains(df, s) {
			t.Errorf("Dockerfile lacks %q", s)
		}
	}
	// A list of Debian packages only needs neither the download helper nor curl.
	small := string(plan(t, "jq").Dockerfile("debian:bookworm-slim"))
	if strings.Contains(small, "moatc-install") || strings.Contains(small, "curl") {
		t.Errorf("jq alone pulls in the download machinery:\n%s", small)
	}
}

func TestDockerfileGolden(t *testing.T) {
	df := plan(t, "essentials", "node@22", "typescript", "go@1.26", "gopls", "esbuild", "python", "docker:host").Dockerfile("debian:bookworm-slim")
	golden := filepath.Join("testdata", "typical.Dockerfile")
	if *update {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(golden, df, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (go test ./deps -run Golden -update writes it)", err)
	}
	if !bytes.Equal(df, want) {
		t.Errorf("Dockerfile differs from %s; if the change is meant, bump GeneratorVersion when the same list now gives other bytes, and run go test ./deps -run Golden -update", golden)
	}
}

func TestRegistryValidation(t *testing.T) {
	good := "x:\n  kind: binary\n  description: d\n  default: \"1\"\n  versions:\n    \"1\":\n      version: 1.0.0\n      files:\n        - url: http://127.0.0.1:8080/x.tgz\n          sha256: " + strings.Repeat("a", 64) + "\n          format: tar.gz\n          place: {x/bin/x: /usr/local/bin/x}\n"
	r, err := Default().Extend([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if i, err := r.Lookup("x"); err != nil || i.Source != "download from 127.0.0.1:8080" {
		t.Errorf("Lookup(x) = %+v, %v", i, err)
	}
	if _, err := Lookup("x"); err == nil {
		t.Error("Extend changed the default registry")
	}
	for _, c := range []struct{ name, from, to, want string }{
		{"bad sha256", strings.Repeat("a", 64), "abc", "sha256"},
		{"quote in url", "x.tgz", "x'.tgz", "bad url"},
		{"relative destination", "/usr/local/bin/x}", "usr/local/bin/x}", "bad destination"},
		{"escaping archive path", "{x/bin/x:", "{../x:", "bad archive path"},
		{"unknown format", "tar.gz", "rar", "format"},
		{"unknown kind", "kind: binary", "kind: cargo", "unknown kind"},
		{"default not a version", `default: "1"`, `default: "2"`, "default"},
		{"unknown field", "description: d", "descripton: d", "descripton"},
	} {
		if _, err := Default().Extend([]byte(strings.Replace(good, c.from, c.to, 1))); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := NewRegistry([]byte("b:\n  kind: meta\n  description: d\n  bundle: [nope]\n")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("bundle of a missing entry: %v", err)
	}
	if _, err := NewRegistry([]byte("t:\n  kind: npm\n  description: d\n  npm: t\n  requires: [node]\n")); err == nil || !strings.Contains(err.Error(), "node") {
		t.Errorf("requires a missing entry: %v", err)
	}
}

func TestExtendedRegistryBinary(t *testing.T) {
	r, err := Default().Extend([]byte(`hello-bin:
  kind: binary
  description: test binary
  default: "1.0"
  versions:
    "1.0":
      version: 1.0.0
      files:
        - url: http://127.0.0.1:9/hello.tar.gz
          sha256: ` + strings.Repeat("b", 64) + `
          format: tar.gz
          place: {hello-1.0/bin/hello: /usr/local/bin/hello}
`))
	if err != nil {
		t.Fatal(err)
	}
	ds, err := r.Parse(entries("hello-bin"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := r.Resolve(ds)
	if err != nil {
		t.Fatal(err)
	}
	df := string(p.Dockerfile("debian:bookworm-slim"))
	want := "sh /usr/local/libexec/moatc-install tar.gz 'http://127.0.0.1:9/hello.tar.gz' " + strings.Repeat("b", 64) + " \\\n      'hello-1.0/bin/hello=/usr/local/bin/hello'"
	if !strings.Contains(df, want) {
		t.Errorf("Dockerfile lacks\n%s\n---\n%s", want, df)
	}
}

// Every registry entry resolves (with what it requires) and yields a Dockerfile.
func TestEveryEntryResolves(t *testing.T) {
	for _, i := range List() {
		list := append([]string{i.Name}, i.Requires...)
		if i.Kind == KindDocker {
			list = []string{"docker:host"}
		}
		ds, err := Parse(entries(list...))
		if err != nil {
			t.Errorf("%s: %v", i.Name, err)
			continue
		}
		p, err := Resolve(ds)
		if err != nil {
			t.Errorf("%s: %v", i.Name, err)
			continue
		}
		if df := p.Dockerfile("debian:bookworm-slim"); !bytes.Contains(df, []byte("USER moatc")) {
			t.Errorf("%s: no Dockerfile", i.Name)
		}
		for _, v := range i.VersionNames() {
			if i.Kind == KindDocker {
				continue
			}
			if _, err := Parse(entries(i.Name + "@" + v)); err != nil {
				t.Errorf("%s@%s: %v", i.Name, v, err)
			}
		}
	}
}

// Each workspace's build has caches of its own: the scope is in every cache id, and so in the tag.
func TestCacheScope(t *testing.T) {
	list := []string{"jq", "node", "typescript", "go", "gopls"}
	a, b, none := plan(t, list...), plan(t, list...), plan(t, list...)
	a.Scope, b.Scope = "wsaaaa", "wsbbbb"
	da, db, dn := string(a.Dockerfile("debian:bookworm-slim")), string(b.Dockerfile("debian:bookworm-slim")), string(none.Dockerfile("debian:bookworm-slim"))
	ids := regexp.MustCompile(`id=([a-z0-9-]+)`)
	for _, m := range ids.FindAllStringSubmatch(da, -1) {
		if m[1] != "moatc-ca" && !strings.HasSuffix(m[1], "-wsaaaa") {
			t.Errorf("cache id %s is not scoped to the workspace", m[1])
		}
	}
	if n := len(ids.FindAllString(da, -1)); n < 6 {
		t.Errorf("only %d mounts with ids in:\n%s", n, da)
	}
	if strings.Contains(dn, "-ws") || a.Tag("debian:bookworm-slim") == b.Tag("debian:bookworm-slim") {
		t.Errorf("tags of two scopes are equal, or an unscoped plan has scoped ids")
	}
	// BuildKit leaves cache mount ids out of step keys: the scope must be in every step's env.
	if !strings.Contains(da, "\nARG MOATC_CACHE_SCOPE=wsaaaa\n") || strings.Index(da, "MOATC_CACHE_SCOPE") > strings.Index(da, "\nRUN ") {
		t.Errorf("the scope is not an ARG before the first RUN:\n%s", da)
	}
	if !strings.Contains(db, "id=moatc-npm-wsbbbb,") {
		t.Errorf("scope b:\n%s", db)
	}
}

func TestRegistryHosts(t *testing.T) {
	ds, err := Parse([]Entry{{Text: "node"}, {Text: "npm:typescript"}, {Text: "go"}, {Text: "apt:jq"}})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(RegistryHosts(ds), " ")
	if want := "deb.debian.org proxy.golang.org registry.npmjs.org sum.golang.org"; got != want {
		t.Errorf("RegistryHosts = %q, want %q", got, want)
	}
	if len(RegistryHosts(nil)) != 0 {
		t.Errorf("hosts for no dependencies")
	}
}
