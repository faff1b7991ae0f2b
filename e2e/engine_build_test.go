package e2e

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestEngineBuild: `docker build` through the engine, carried out by BuildKit's dockerfile
// frontend on moatc's buildkitd, under gVisor and runc (the engine's runtime; RUN steps are
// always in the gVisor build sandbox).
func TestEngineBuild(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			eng := startEngine(t, rt, "moatc-engine-build-e2e-"+rt, true)
			eng.stopAtCleanup(t)
			d := eng.cli(t, docker)

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
			// An untagged build with -q: the CLI prints only the image's ID, and it runs.
			id := strings.TrimSpace(d.ok("build", "-q", "--build-arg", "GREETING=again", dir))
			if !strings.HasPrefix(id, "sha256:") || len(id) != 71 {
				t.Fatalf("docker build -q: %q; want the image's ID", id)
			}
			if out := d.ok("run", "--rm", id); !strings.Contains(out, "built again\n") {
				t.Errorf("docker run of the untagged build %s: %q", id, out)
			}

			fail := t.TempDir()
			buildWrite(t, fail, "Dockerfile", "FROM busybox\nRUN echo about to fail && exit 3\n")
			r = d.run("", "build", fail)
			if r.code != 1 {
				t.Errorf("docker build of a failing RUN: exit %d; want 1\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if all := r.stdout + r.stderr; !strings.Contains(all, "about to fail") || !strings.Contains(all, "exit code: 3") {
				t.Errorf("docker build of a failing RUN does not show its output and exit code:\n%s", all)
			}

			buildSources(t, d, eng, rt)
			buildUserFiles(t, d, rt)

			// The build's temporary name in moatc's store (BuildKit's worker namespace) is gone.
			if out, err := exec.Command(moatc, "image", "ls").CombinedOutput(); err != nil || strings.Contains(string(out), "moatc-engine-build") {
				t.Errorf("moatc image ls (%v) shows the engine's build:\n%s", err, out)
			}

			r = d.run("", "build", "--network", "host", dir)
			if r.code == 0 || !strings.Contains(r.stderr, "host's network") {
				t.Errorf("docker build --network host: exit %d, %s; want refused", r.code, r.stderr)
			}

			// A body that is not a tar: 400, and the engine goes on.
			if r := httpDo(t, eng.sock, "POST", "/v1.44/build?t=bad", "application/x-tar", strings.NewReader(strings.Repeat("not a tar\n", 100))); r.code != 400 || !strings.Contains(r.body, "not a tar") {
				t.Errorf("a build context that is not a tar: %d %s %v", r.code, r.body, r.err)
			}

			// A client that leaves mid-build: the solve is cancelled, its context directory goes.
			slow := t.TempDir()
			buildWrite(t, slow, "Dockerfile", "FROM busybox\nRUN sleep 60\n")
			cmd := exec.Command(docker, "build", "--no-cache", slow)
			cmd.Env = append(os.Environ(), d.env...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			cmd.Process.Kill()
			cmd.Wait()
			deadline := time.Now().Add(30 * time.Second)
			for {
				dirs, _ := filepath.Glob(filepath.Join(home, "buildkit", "ctx-*"))
				if len(dirs) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("30s after the client left, the build's context directories remain: %v", dirs)
					break
				}
				time.Sleep(200 * time.Millisecond)
			}

			if r := httpDo(t, eng.sock, "POST", "/v1.44/build/prune?all=1", "", nil); r.code != 200 || !strings.Contains(r.body, `"CachesDeleted":[]`) || !strings.Contains(r.body, `"SpaceReclaimed":0`) {
				t.Errorf("POST /build/prune: %d %s %v", r.code, r.body, r.err)
			}
			if r := engineGet(t, eng.sock, "/_ping"); r.code != 200 {
				t.Errorf("the engine does not answer after the builds: %+v", r)
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

// buildSources: a build reads images from the engine's namespace only. An image the engine
// tagged is a FROM; one only moatc's store has (debian:bookworm-slim, from the base images)
// is pulled as `docker pull` would, never read from the store; what a Dockerfile names past
// FROM and COPY --from, ADD of a URL and a `# syntax=` frontend are refused or ignored without
// a connection leaving buildkitd; cache mounts are the engine's own.
func buildSources(t *testing.T, d *dockerCLI, eng *engineProc, rt string) {
	d.ok("tag", "busybox", "onlyhere:1")
	dir := t.TempDir()
	buildWrite(t, dir, "Dockerfile", "# syntax=docker/dockerfile:1\nARG BASE=onlyhere:1\nFROM $BASE\nRUN echo from-the-engine > /o\n")
	if r := d.run("", "build", "-t", "fromengine:1", dir); r.code != 0 {
		t.Errorf("docker build FROM an image the engine tagged: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	} else if out := d.ok("run", "--rm", "fromengine:1", "cat", "/o"); out != "from-the-engine\n" {
		t.Errorf("the build FROM the engine's image: %q", out)
	}

	store := t.TempDir()
	buildWrite(t, store, "Dockerfile", "FROM debian:bookworm-slim\nRUN true\n")
	r := d.run("", "build", store)
	if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "pulling debian:bookworm-slim for the build") {
		t.Errorf("docker build FROM an image only moatc's store has: exit %d; want a pull (that fails here)\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	for name, df := range map[string]string{
		"ADD of a URL":          "FROM busybox\nADD http://" + ln.Addr().String() + "/x /x\n",
		"a git source":          "FROM busybox\nADD git://" + ln.Addr().String() + "/x.git /x\n",
		"a mount from an image": "FROM busybox\nRUN --mount=type=bind,from=" + ln.Addr().String() + "/img:1,target=/m true\n",
	} {
		bad := t.TempDir()
		buildWrite(t, bad, "Dockerfile", df)
		r := d.run("", "build", bad)
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "denied by policy") || !strings.Contains(r.stdout+r.stderr, "docker pull") {
			t.Errorf("docker build with %s: exit %d; want refused by the source policy, with the hint\n%s\n%s", name, r.code, r.stdout, r.stderr)
		}
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("buildkitd connected %d times to the address the refused builds named", n)
	}

	// A cache mount written by this engine's build is not another engine's.
	cache := t.TempDir()
	buildWrite(t, cache, "Dockerfile", "FROM busybox\nARG V\nRUN --mount=type=cache,id=shared,target=/c echo $V > /c/f; cat /c/f > /seen\n")
	d.ok("build", "--build-arg", "V=first-"+rt, "-t", "cache:1", cache)
	other := launchEngine(t, filepath.Join(home, "engine-other-"+rt+".sock"), append([]string{"--namespace", "moatc-engine-build-other-" + rt, "--image", "busybox", "--ephemeral"}, sandboxArgs(rt)...)...)
	defer other.stop(t)
	o := other.cli(t, d.bin)
	buildWrite(t, cache, "Dockerfile", "FROM busybox\nRUN --mount=type=cache,id=shared,target=/c cat /c/f > /seen 2>&1 || echo none > /seen\n")
	o.ok("build", "-t", "cache:2", cache)
	if out := o.ok("run", "--rm", "cache:2", "cat", "/seen"); strings.Contains(out, "first-"+rt) {
		t.Errorf("another engine's build read this engine's cache mount: %q", out)
	}
}

// buildUserFiles: an image (or a runc container) whose /etc/passwd is a FIFO does not hang the
// engine when a user name is resolved: the create or exec is refused, and the engine answers.
// The image is busybox with a layer of its own added (a gVisor build sandbox keeps a FIFO a
// RUN step makes inside the sandbox: it never reaches the layer).
func buildUserFiles(t *testing.T, d *dockerCLI, rt string) {
	dir := t.TempDir()
	d.ok("save", "-o", filepath.Join(dir, "bb.tar"), "busybox")
	fifo := &bytes.Buffer{}
	tw := tar.NewWriter(fifo)
	tw.WriteHeader(&tar.Header{Name: "etc/passwd", Typeflag: tar.TypeFifo, Mode: 0o644})
	tw.Close()
	engineAddLayer(t, filepath.Join(dir, "bb.tar"), filepath.Join(dir, "fifo.tar"), "fifo-passwd:1", fifo.Bytes(), "nobody")
	d.ok("load", "-i", filepath.Join(dir, "fifo.tar"))
	done := make(chan result, 1)
	go func() { done <- d.run("", "run", "--rm", "fifo-passwd:1", "id") }()
	select {
	case r := <-done:
		if r.code == 0 || !strings.Contains(r.stderr, "/etc/passwd is not a regular file") {
			t.Errorf("docker run of an image whose /etc/passwd is a FIFO: exit %d; want refused\n%s\n%s", r.code, r.stdout, r.stderr)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("docker run of an image whose /etc/passwd is a FIFO hangs")
	}
	if rt != "runc" {
		return // under gVisor what the container writes stays in its sandbox
	}
	d.ok("run", "-d", "--name", "fifo-exec", "busybox", "sleep", "300")
	defer d.run("", "rm", "-f", "fifo-exec")
	d.ok("exec", "fifo-exec", "sh", "-c", "rm /etc/passwd && mkfifo /etc/passwd")
	r := d.run("", "exec", "-u", "nobody", "fifo-exec", "id")
	if r.code == 0 || !strings.Contains(r.stderr, "/etc/passwd is not a regular file") {
		t.Errorf("docker exec -u nobody in a container whose /etc/passwd became a FIFO: exit %d; want refused\n%s\n%s", r.code, r.stdout, r.stderr)
	}
}

// engineAddLayer writes to out the image of `docker save` archive in with one more
// (uncompressed) layer and USER user, named tag, as a docker-archive (manifest.json) tar.
func engineAddLayer(t *testing.T, in, out, tag string, layer []byte, user string) {
	t.Helper()
	f, err := os.Open(in)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string][]byte{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name] = b
		}
	}
	var manifest []struct {
		Config string
		Layers []string
	}
	if err := json.Unmarshal(files["manifest.json"], &manifest); err != nil || len(manifest) != 1 {
		t.Fatalf("the saved archive's manifest.json: %v %s", err, files["manifest.json"])
	}
	var cfg map[string]any
	if err := json.Unmarshal(files[manifest[0].Config], &cfg); err != nil {
		t.Fatal(err)
	}
	sum := func(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }
	lsum := sum(layer)
	rootfs := cfg["rootfs"].(map[string]any)
	rootfs["diff_ids"] = append(rootfs["diff_ids"].([]any), "sha256:"+lsum)
	cfg["config"].(map[string]any)["User"] = user
	delete(cfg, "history")
	cb, _ := json.Marshal(cfg)
	csum := sum(cb)
	mb, _ := json.Marshal([]map[string]any{{"Config": "blobs/sha256/" + csum, "RepoTags": []string{tag},
		"Layers": append(manifest[0].Layers, "blobs/sha256/"+lsum)}})
	o, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	tw := tar.NewWriter(o)
	put := func(name string, b []byte) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg})
		tw.Write(b)
	}
	for _, l := range manifest[0].Layers {
		put(l, files[l])
	}
	put("blobs/sha256/"+lsum, layer)
	put("blobs/sha256/"+csum, cb)
	put("manifest.json", mb)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}
