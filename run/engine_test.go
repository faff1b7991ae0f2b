package run

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/moatc/moatc/state"
)

// The compose plugin is mounted only when `make setup` could build it.
func TestDockerMountsCompose(t *testing.T) {
	dir := t.TempDir()
	s, err := state.Open(filepath.Join(dir, "runs"))
	if err != nil {
		t.Fatal(err)
	}
	m := &Manager{Store: s, Prefix: filepath.Join(dir, "prefix")}
	targets := func() []string {
		var ts []string
		for _, mt := range m.dockerMounts("r1") {
			ts = append(ts, mt.Destination)
		}
		return ts
	}
	if got := targets(); len(got) != 2 || got[0] != DockerSocketTarget || got[1] != DockerCLITarget {
		t.Errorf("without the plugin: %v", got)
	}
	plugin := filepath.Join(m.Prefix, "lib", "docker", "cli-plugins", "docker-compose")
	os.MkdirAll(filepath.Dir(plugin), 0o755)
	if err := os.WriteFile(plugin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	mts := m.dockerMounts("r1")
	if len(mts) != 3 || mts[2].Destination != DockerComposeTarget || mts[2].Source != plugin || mts[2].Options[1] != "ro" {
		t.Errorf("with the plugin: %+v", mts)
	}
}
