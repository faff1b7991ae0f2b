package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func imageCreated(t *testing.T, name string) string {
	t.Helper()
	var imgs []struct{ Name, Created, Digest string }
	json.Unmarshal([]byte(mustRun(t, "image", "ls", "--json").stdout), &imgs)
	for _, i := range imgs {
		if i.Name == name {
			return i.Created + " " + i.Digest
		}
	}
	return ""
}

// TestDependencyImage: a moatc.yaml with dependencies builds an image once (BuildKit on
// moatc's containerd), the tool works inside under gVisor, and an unchanged list builds nothing.
func TestDependencyImage(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - jq\n"), 0o644)

	dry := mustRun(t, "build", "--dry-run", ws).stdout
	if dry != mustRun(t, "build", "--dry-run", ws).stdout || !strings.Contains(dry, "FROM docker.io/library/debian:bookworm-slim") {
		t.Fatalf("dry run not deterministic or unexpected:\n%s", dry)
	}
	tag := strings.Fields(strings.SplitN(dry, "\n", 2)[0])[2] // "# image moatc/run:HASH from BASE"
	name := "docker.io/" + tag

	r := moatcRun(t, opts{}, "run", "-n", "deps-1", ws, "--", "sh", "-c", "echo '{\"a\":[1,2]}' | jq -c .a; jq --version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "[1,2]\njq-") {
		t.Fatalf("run with jq: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if st := status(t, "deps-1"); st.Spec.Image != name || st.Spec.Runtime != "gvisor" {
		t.Errorf("run used %s (%s), want %s under gvisor", st.Spec.Image, st.Spec.Runtime, name)
	}
	if s := mustRun(t, "status", "deps-1").stdout; !strings.Contains(s, "Build log:") {
		t.Errorf("status shows no build log: %s", s)
	}
	first := imageCreated(t, name)
	if first == "" {
		t.Fatalf("image %s not in the store", name)
	}
	r = moatcRun(t, opts{}, "run", "--no-sandbox", ws, "--", "jq", "-n", "1+1")
	if r.code != 0 || r.stdout != "2\n" {
		t.Fatalf("second run: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if again := imageCreated(t, name); again != first {
		t.Errorf("an unchanged list was built again: %s then %s", first, again)
	}
	if strings.Contains(r.stderr, "RUN") || strings.Contains(r.stderr, "[+]") {
		t.Errorf("second run shows build progress: %s", r.stderr)
	}
}

func TestDependencyBadInput(t *testing.T) {
	requireStack(t)
	imagesBefore := mustRun(t, "image", "ls").stdout
	for _, c := range []struct{ yaml, want string }{
		{"dependencies:\n  - git\n  - jqq\n", "moatc.yaml:3: unknown dependency \"jqq\""},
		{"dependencies:\n  - docker\n", "docker:host"},
		{"dependencies:\n  - node@99\n", "moatc.yaml:2"},
		{"dependencies:\n  - node@\n", "moatc.yaml:2"},
		{"dependencies:\n  - node@22\n  - node@24\n", "node"},
		{"dependencies:\n  - npm:typescript\n", "node"},
		{"dependencies: jq\n", "moatc.yaml:1: dependencies: must be a list"},
		{"base_image: nosuch/base:1\ndependencies: [jq]\n", "nosuch/base:1"},
	} {
		ws := workspace(t)
		os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte(c.yaml), 0o644)
		r := moatcRun(t, opts{}, "run", "--no-sandbox", ws, "--", "true")
		if r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%q: exit %d stderr %q, want %q", c.yaml, r.code, r.stderr, c.want)
		}
	}
	if after := mustRun(t, "image", "ls").stdout; after != imagesBefore {
		t.Errorf("bad input left images:\n%s\nbefore:\n%s", after, imagesBefore)
	}
}
