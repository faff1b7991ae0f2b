package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestEngineBuild: `docker build` through the engine, carried out by BuildKit's dockerfile
// frontend on moatc's buildkitd, under gVisor and runc (the engine's runtime; RUN steps are
// always in the gVisor build sandbox).
func TestEngineBuild(t *testing.T) {
	requireStack(t)
	docker := filepath.Join(prefix, "bin", "docker")
	if _, err := os.Stat(docker); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the Docker CLI is not installed in %s (run `make setup`): %v", prefix, err)
		}
		t.Skipf("the Docker CLI is not installed in %s (never skipped in CI): %v", prefix, err)
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			eng := startEngine(t, rt, "moatc-engine-build-e2e-"+rt, true)
			t.Cleanup(func() {
				eng.stop(t)
				if t.Failed() {
					t.Logf("the engine's stderr:\n%s", eng.stderr)
				}
			})
			d := &dockerCLI{t: t, bin: docker, env: []string{"DOCKER_HOST=unix://" + eng.sock, "DOCKER_CONFIG=" + t.TempDir()}}

			dir := t.TempDir()
			buildWrite(t, dir, "Dockerfile", `FROM busybox AS a
ARG GREETING=none
RUN echo "built $GREETING" > /out.txt
FROM busybox
COPY --from=a /out.txt /out.txt
COPY . /ctx/
CMD ["sh", "-c", "cat /out.txt; ls /ctx"]
`)
			buildWrite(t, dir, ".dockerignore", "secret.txt\n")
			buildWrite(t, dir, "kept.txt", "kept\n")
			buildWrite(t, dir, "secret.txt", "do not send\n")

			tag := "moatc-build-e2e-" + rt + ":x"
			r := d.run("", "build", "-t", tag, "--build-arg", "GREETING=hello", dir)
			if r.code != 0 {
				t.Fatalf("docker build: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout, "Successfully tagged "+tag) {
				t.Errorf("docker build's output has no tag line:\n%s", r.stdout)
			}
			out := d.ok("run", "--rm", tag)
			if !strings.Contains(out, "built hello\n") || !strings.Contains(out, "kept.txt") {
				t.Errorf("docker run of the built image: %q; want the build arg's file and kept.txt", out)
			}
			if strings.Contains(out, "secret.txt") {
				t.Errorf("docker run of the built image: %q; secret.txt is in .dockerignore", out)
			}
			if id := strings.TrimSpace(d.ok("image", "inspect", "--format", "{{.Id}}", tag)); !strings.HasPrefix(id, "sha256:") {
				t.Errorf("docker image inspect: %q", id)
			}

			// An untagged build: the CLI prints the image's ID, which runs.
			fail := t.TempDir()
			buildWrite(t, fail, "Dockerfile", "FROM busybox\nRUN echo about to fail && exit 3\n")
			r = d.run("", "build", fail)
			if r.code != 1 {
				t.Errorf("docker build of a failing RUN: exit %d; want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if all := r.stdout + r.stderr; !strings.Contains(all, "about to fail") || !strings.Contains(all, "exit code: 3") {
				t.Errorf("docker build of a failing RUN does not show its output and exit code:\n%s", all)
			}

			r = d.run("", "build", "--network", "host", dir)
			if r.code == 0 || !strings.Contains(r.stderr, "host's network") {
				t.Errorf("docker build --network host: exit %d, %s; want refused", r.code, r.stderr)
			}
		})
	}
}

func buildWrite(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}
