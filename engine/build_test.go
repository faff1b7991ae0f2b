package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	spb "github.com/moby/buildkit/sourcepolicy/pb"
)

type tarEntry struct {
	name, link, body string
	typ              byte
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeDir {
			h.Mode = 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestExtractContext(t *testing.T) {
	tb := makeTar(t, []tarEntry{
		{name: "Dockerfile", body: "FROM busybox\n", typ: tar.TypeReg},
		{name: "sub/", typ: tar.TypeDir},
		{name: "sub/a.txt", body: "a", typ: tar.TypeReg},
		{name: "deep/x/y.txt", body: "y", typ: tar.TypeReg}, // no directory entries before it
		{name: "link", link: "/etc/passwd", typ: tar.TypeSymlink},
		{name: "hard", link: "sub/a.txt", typ: tar.TypeLink},
	})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(tb)
	zw.Close()
	for name, body := range map[string][]byte{"plain": tb, "gzip": gz.Bytes()} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := extractContext(bytes.NewReader(body), dir); err != nil {
				t.Fatal(err)
			}
			for p, want := range map[string]string{"Dockerfile": "FROM busybox\n", "sub/a.txt": "a", "deep/x/y.txt": "y", "hard": "a"} {
				if b, err := os.ReadFile(filepath.Join(dir, p)); err != nil || string(b) != want {
					t.Errorf("%s: %q, %v; want %q", p, b, err, want)
				}
			}
			// Kept as a symlink, never followed.
			if l, err := os.Readlink(filepath.Join(dir, "link")); err != nil || l != "/etc/passwd" {
				t.Errorf("link: %q, %v", l, err)
			}
		})
	}
}

func TestExtractContextRefuses(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]byte{
		"dot-dot":          makeTar(t, []tarEntry{{name: "../escape", body: "x", typ: tar.TypeReg}}),
		"dot-dot inside":   makeTar(t, []tarEntry{{name: "a/../../escape", body: "x", typ: tar.TypeReg}}),
		"through symlink":  makeTar(t, []tarEntry{{name: "out", link: outside, typ: tar.TypeSymlink}, {name: "out/escape", body: "x", typ: tar.TypeReg}}),
		"relative symlink": makeTar(t, []tarEntry{{name: "up", link: "../../../../../../" + outside, typ: tar.TypeSymlink}, {name: "up/escape", body: "x", typ: tar.TypeReg}}),
		"hard link out":    makeTar(t, []tarEntry{{name: "h", link: "../../etc/passwd", typ: tar.TypeLink}}),
		"not a tar":        []byte(strings.Repeat("this is not a tar archive\n", 40)),
		"bad gzip":         {0x1f, 0x8b, 0, 1, 2, 3},
	}
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			err := extractContext(bytes.NewReader(body), dir)
			if err == nil {
				t.Fatal("extracted; want an error")
			}
			if statusOf(err) != 400 {
				t.Errorf("%v: status %d; want 400", err, statusOf(err))
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 0 {
				t.Errorf("something was written outside the context: %v", ents)
			}
		})
	}
	// An empty body is an empty context.
	if err := extractContext(bytes.NewReader(nil), t.TempDir()); err != nil {
		t.Errorf("empty context: %v", err)
	}
}

func TestParseBuildOptions(t *testing.T) {
	r := httptest.NewRequest("POST", `/build?t=x&t=reg.example/y:1&buildargs={"A":"1","B":null}&labels={"l":"v"}&target=a&nocache=1&pull=1&networkmode=none&dockerfile=sub/Dfile&q=1`, nil)
	o, err := parseBuildOptions(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(o.tags, ",") != "docker.io/library/x:latest,reg.example/y:1" {
		t.Errorf("tags %v", o.tags)
	}
	want := map[string]string{"build-arg:A": "1", "label:l": "v", "target": "a", "no-cache": "",
		"force-network-mode": "none", "build-arg:BUILDKIT_SANDBOX_HOSTNAME": "moatc-build"}
	for k, v := range want {
		if got, ok := o.attrs[k]; !ok || got != v {
			t.Errorf("attr %s = %q (%v); want %q", k, got, ok, v)
		}
	}
	if _, ok := o.attrs["build-arg:B"]; ok {
		t.Error("a null build arg is passed")
	}
	if !o.pull {
		t.Error("pull=1 is not kept")
	}
	if o.dockerfile != "sub/Dfile" || !o.quiet {
		t.Errorf("dockerfile %q quiet %v", o.dockerfile, o.quiet)
	}
	for _, q := range []string{"networkmode=host", "networkmode=container:x", "dockerfile=../Dockerfile", "dockerfile=/etc/Dockerfile", "t=UPPER:x", "buildargs=nope"} {
		if _, err := parseBuildOptions(httptest.NewRequest("POST", "/build?"+q, nil)); err == nil {
			t.Errorf("%s: accepted", q)
		}
	}
	if _, err := parseBuildOptions(httptest.NewRequest("POST", "/build?networkmode=host", nil)); statusOf(err) != 403 {
		t.Errorf("networkmode=host: status %d; want 403", statusOf(err))
	}
}

func TestBaseImages(t *testing.T) {
	cases := []struct {
		name, df string
		args     map[string]string
		want     []string
	}{
		{"stages and scratch", "FROM busybox AS a\nRUN true\nFROM scratch\nCOPY --from=a /x /x\nFROM a\n", nil, []string{"busybox"}},
		{"copy from an image", "FROM busybox\nCOPY --from=alpine:3 /etc/os-release /x\nCOPY --from=0 /x /y\n", nil, []string{"busybox", "alpine:3"}},
		{"meta args", "ARG BASE=debian\nARG TAG\nFROM ${BASE}:${TAG:-12}\n", nil, []string{"debian:12"}},
		{"build args win", "ARG BASE=debian\nFROM $BASE\n", map[string]string{"BASE": "ubuntu"}, []string{"ubuntu"}},
		{"stage names are case-insensitive", "FROM busybox AS Build\nFROM build\n", nil, []string{"busybox"}},
		{"unset arg", "FROM $NOPE\n", nil, nil},
		{"not a Dockerfile", "FROM\n", nil, nil},
	}
	for _, c := range cases {
		if got := baseImages([]byte(c.df), c.args); !slices.Equal(got, c.want) {
			t.Errorf("%s: baseImages = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestBuildPolicyRules(t *testing.T) {
	p := buildPolicy()
	verdict := func(id string) spb.PolicyAction {
		a := spb.PolicyAction_ALLOW
		for _, r := range p.Rules {
			if regexp.MustCompile(r.Selector.Identifier).MatchString(id) {
				a = r.Action
			}
		}
		return a
	}
	for id, want := range map[string]spb.PolicyAction{
		"local://context":    spb.PolicyAction_ALLOW,
		"local://dockerfile": spb.PolicyAction_ALLOW,
		"oci-layout://docker.io/library/busybox@sha256:00": spb.PolicyAction_ALLOW,
		"local://other": spb.PolicyAction_DENY,
		"docker-image://docker.io/library/busybox:latest": spb.PolicyAction_DENY,
		"https://example.com/x":                           spb.PolicyAction_DENY,
		"git://example.com/x.git":                         spb.PolicyAction_DENY,
	} {
		if got := verdict(id); got != want {
			t.Errorf("%s: %v, want %v", id, got, want)
		}
	}
}

// TestExtractContextLimits: a context over the byte or file limit is 400, and what was written
// stops at the limit.
func TestExtractContextLimits(t *testing.T) {
	saved := contextLimits
	t.Cleanup(func() { contextLimits = saved })
	contextLimits.bytes, contextLimits.entries = 1000, 5
	big := makeTar(t, []tarEntry{{name: "a", body: strings.Repeat("x", 600), typ: tar.TypeReg}, {name: "b", body: strings.Repeat("y", 600), typ: tar.TypeReg}})
	dir := t.TempDir()
	if err := extractContext(bytes.NewReader(big), dir); statusOf(err) != 400 || !strings.Contains(fmt.Sprint(err), "moatc's limit") {
		t.Errorf("a context over the byte limit: %v (status %d); want 400 naming the limit", err, statusOf(err))
	}
	if fi, err := os.Stat(filepath.Join(dir, "b")); err == nil && fi.Size() > 401 {
		t.Errorf("b was written past the limit: %d bytes", fi.Size())
	}
	var many []tarEntry
	for i := range 6 {
		many = append(many, tarEntry{name: fmt.Sprintf("f%d", i), body: "", typ: tar.TypeReg})
	}
	if err := extractContext(bytes.NewReader(makeTar(t, many)), t.TempDir()); statusOf(err) != 400 || !strings.Contains(fmt.Sprint(err), "over 5 files") {
		t.Errorf("a context over the file limit: %v; want 400", err)
	}
	if err := extractContext(bytes.NewReader(makeTar(t, many[:5])), t.TempDir()); err != nil {
		t.Errorf("a context at the limits: %v", err)
	}
}
