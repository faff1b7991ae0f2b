package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// composeFile is two services: web serves a page and has a health check (and a restart
// policy); client starts once web is healthy, fetches the page by web's service name over the
// project's network and logs what it got.
const composeFile = `services:
  web:
    image: busybox
    restart: unless-stopped
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 8080 -h /www"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://localhost:8080/index.html"]
      interval: 500ms
      retries: 20
  client:
    image: busybox
    depends_on:
      web:
        condition: service_healthy
    command: ["sh", "-c", "until wget -q -O - http://web:8080/index.html; do sleep 0.5; done; exec sleep 600"]
`

// TestEngineCompose runs the compose plugin v5.6.0 (built by setup.sh into the prefix) against
// the engine under both runtimes: up -d of a two-service project where one service reaches the
// other by name, ps, and down, which leaves no container and no network behind.
func TestEngineCompose(t *testing.T) {
	if _, err := os.Stat(filepath.Join(prefix, "lib", "docker", "cli-plugins", "docker-compose")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the compose plugin is not installed (run `make setup`): %v", err)
		}
		t.Skipf("the compose plugin is not installed (run `make setup`; never skipped in CI): %v", err)
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			_, d := tcEngine(t, rt, "moatc-engine-compose-"+rt)
			if out := d.ok("compose", "version"); !strings.Contains(out, "v5.6.0") {
				t.Fatalf("docker compose version: %s", out)
			}
			dir := t.TempDir()
			file := filepath.Join(dir, "compose.yaml")
			if err := os.WriteFile(file, []byte(composeFile), 0o644); err != nil {
				t.Fatal(err)
			}
			compose := func(args ...string) string {
				return d.ok(append([]string{"compose", "-p", "e2e", "-f", file}, args...)...)
			}
			t.Cleanup(func() {
				if t.Failed() {
					d.run("", "compose", "-p", "e2e", "-f", file, "down", "-t", "0")
				}
			})
			compose("up", "-d")

			ps := compose("ps", "--format", "{{.Service}} {{.State}} {{.Health}}")
			if !strings.Contains(ps, "web running healthy") || !strings.Contains(ps, "client running") {
				t.Errorf("docker compose ps (web must be healthy: client waited for it):\n%s", ps)
			}
			for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(500 * time.Millisecond) {
				logs := compose("logs", "client")
				if strings.Contains(logs, "hello-from-web") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("client never reached web by name:\n%s", logs)
				}
			}
			if nets := d.ok("network", "ls", "--format", "{{.Name}}"); !strings.Contains(nets, "e2e_default") {
				t.Errorf("the project's network is missing:\n%s", nets)
			}

			compose("down", "-t", "1")
			if out := d.ok("ps", "-aq"); strings.TrimSpace(out) != "" {
				t.Errorf("containers left after down:\n%s", out)
			}
			if nets := d.ok("network", "ls", "--format", "{{.Name}}"); strings.Contains(nets, "e2e_") {
				t.Errorf("networks left after down:\n%s", nets)
			}
			if ps := compose("ps", "-a", "-q"); strings.TrimSpace(ps) != "" {
				t.Errorf("compose ps -a after down:\n%s", ps)
			}
		})
	}
}
