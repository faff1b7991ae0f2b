package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageAndSystemJSON: the changing image and system commands print what they did.
func TestImageAndSystemJSON(t *testing.T) {
	requireStack(t)
	var st struct {
		State   string `json:"state"`
		Pid     int    `json:"pid"`
		Address string `json:"address"`
	}
	out := mustRun(t, "system", "start", "--json").stdout
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.State != "running" || st.Pid == 0 || st.Address == "" {
		t.Fatalf("system start --json: %v %q", err, out)
	}
	var done []struct {
		Name   string `json:"name"`
		Action string `json:"action"`
	}
	out = mustRun(t, "image", "import", "--json", "--name", "docker.io/library/jsontest:1", filepath.Join(prefix, "images", "busybox.oci.tar")).stdout
	if err := json.Unmarshal([]byte(out), &done); err != nil || len(done) == 0 || done[0].Action != "imported" {
		t.Fatalf("image import --json: %v %q", err, out)
	}
	// A one-file image of its own, packed, then removed.
	root := filepath.Join(workspace(t), "rootfs")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out = mustRun(t, "image", "pack", "--json", "--name", "jsontest:1", root).stdout
	if err := json.Unmarshal([]byte(out), &done); err != nil || len(done) != 1 || done[0].Action != "imported" || done[0].Name != "docker.io/library/jsontest:1" {
		t.Fatalf("image pack --json: %v %q", err, out)
	}
	out = mustRun(t, "image", "rm", "--json", "jsontest:1").stdout
	if err := json.Unmarshal([]byte(out), &done); err != nil || len(done) != 1 || done[0].Action != "removed" {
		t.Fatalf("image rm --json: %v %q", err, out)
	}
	for _, img := range strings.Split(mustRun(t, "image", "ls").stdout, "\n") {
		if strings.Contains(img, "jsontest") {
			t.Fatalf("image rm left %s", img)
		}
	}
}
