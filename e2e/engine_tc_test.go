package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tcEngine starts an ephemeral engine for rt in a namespace of the testcontainers tests and
// a Docker CLI pointed at it; both end with the test.
func tcEngine(t *testing.T, rt, ns string) (*engineProc, *dockerCLI) {
	t.Helper()
	requireStack(t)
	docker := requireDockerCLI(t)
	eng := tcStartEngine(t, rt, ns)
	eng.stopAtCleanup(t)
	return eng, &dockerCLI{t: t, bin: docker, env: []string{"DOCKER_HOST=unix://" + eng.sock, "DOCKER_CONFIG=" + tcDockerConfig(t)}}
}

// tcStartEngine starts an ephemeral engine whose socket is bindable at its own host path, the
// path a client on the host gives testcontainers' reaper to bind (DOCKER_HOST's).
func tcStartEngine(t *testing.T, rt, ns string) *engineProc {
	t.Helper()
	sock := filepath.Join(home, "engine-tc-"+rt+".sock")
	args := append([]string{"--socket-target", sock, "--namespace", ns, "--image", "busybox", "--ephemeral"}, sandboxArgs(rt)...)
	return launchEngine(t, sock, args...)
}

// tcDockerConfig is a Docker CLI config directory that finds the compose plugin setup.sh
// installs in the prefix.
func tcDockerConfig(t *testing.T) string {
	dir := t.TempDir()
	cfg, _ := json.Marshal(map[string]any{"cliPluginsExtraDirs": []string{filepath.Join(prefix, "lib", "docker", "cli-plugins")}})
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestEngineReaper proves moatc's reaper (cmd/moatc-reaper) against a real engine: the engine
// makes testcontainers' ryuk image from it on demand and runs it under both runtimes, and the
// reaper removes what a client's filters name, and nothing else, once the client has gone.
func TestEngineReaper(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			eng, d := tcEngine(t, rt, "moatc-engine-reaper-"+rt)

			// The image testcontainers-go v0.45.0 asks for, made on demand by the engine.
			out := d.run("", "run", "--rm", "-e", "RYUK_CONNECTION_TIMEOUT=1s", "testcontainers/ryuk:0.14.0")
			if out.code != 0 || !strings.Contains(out.stderr+out.stdout, "Started") || !strings.Contains(out.stderr+out.stdout, "no client connected within 1s") {
				t.Fatalf("docker run testcontainers/ryuk:0.14.0: %+v", out)
			}
			id := strings.TrimSpace(d.ok("create", "testcontainers/ryuk:0.14.0"))
			if cmd := d.ok("inspect", "--format", "{{json .Config.Cmd}} {{.Config.Image}}", id); strings.TrimSpace(cmd) != `["/bin/ryuk"] testcontainers/ryuk:0.14.0` {
				t.Errorf("the reaper image's Cmd: %s", cmd)
			}
			d.ok("rm", id)
			// As testcontainers asks: inspect first, and a pull is answered with moatc's image.
			if cmd := d.ok("image", "inspect", "--format", "{{json .Config.Cmd}} {{index .Config.Labels \"moatc.built-locally\"}}", "testcontainers/ryuk:0.14.0"); strings.TrimSpace(cmd) != `["/bin/ryuk"] true` {
				t.Errorf("docker image inspect of the reaper image: %s", cmd)
			}
			d.ok("rmi", "testcontainers/ryuk:0.14.0")
			if out := d.ok("pull", "testcontainers/ryuk:0.14.0"); !strings.Contains(out, "moatc-reaper") || !strings.Contains(out, "Image is up to date") {
				t.Errorf("docker pull of the reaper image:\n%s", out)
			}
			if r := d.run("", "create", "testcontainers/notryuk:1"); r.code == 0 || !strings.Contains(r.stderr, "Unable to find image 'testcontainers/notryuk:1' locally") {
				t.Errorf("another repository must not be made: %+v", r)
			}

			// The reaper on the host, with the engine's socket as its Docker.
			const sess = "org.testcontainers.sessionId=e2e-" + "reaper"
			doomed := []string{
				strings.TrimSpace(d.ok("run", "-d", "--label", "org.testcontainers=true", "--label", sess, "busybox", "sleep", "300")),
				strings.TrimSpace(d.ok("create", "--label", "org.testcontainers=true", "--label", sess, "busybox", "true")),
			}
			spared := strings.TrimSpace(d.ok("create", "--label", "org.testcontainers=true", "--label", "org.testcontainers.sessionId=other", "busybox", "true"))
			ryuk := strings.TrimSpace(d.ok("create", "--label", "org.testcontainers=true", "--label", sess, "--label", "org.testcontainers.ryuk=true", "busybox", "true"))

			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := l.Addr().(*net.TCPAddr).Port
			l.Close()
			cmd := exec.Command(filepath.Join(filepath.Dir(moatc), "moatc-reaper"))
			cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+eng.sock, "RYUK_PORT="+itoa(port), "RYUK_RECONNECTION_TIMEOUT=1s", "RYUK_VERBOSE=true")
			var logb bytes.Buffer
			cmd.Stderr = &logb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() { cmd.Process.Kill() })

			var c net.Conn
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				if c, err = net.Dial("tcp", l.Addr().String()); err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the reaper does not listen: %v\n%s", err, logb.String())
				}
			}
			c.Write([]byte("label=org.testcontainers=true&label=" + sess + "\n"))
			ack, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || ack != "ACK\n" {
				t.Fatalf("the reaper answered %q, %v", ack, err)
			}
			// Still connected: nothing is removed.
			time.Sleep(1500 * time.Millisecond)
			if out := d.ok("ps", "-aq", "--no-trunc", "--filter", "label="+sess); strings.Count(out, "\n") != 3 {
				t.Fatalf("containers removed while the client is connected:\n%s", out)
			}
			c.Close()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("the reaper ended with %v\n%s", err, logb.String())
				}
			case <-time.After(2 * time.Minute):
				t.Fatalf("the reaper did not end after its client left\n%s", logb.String())
			}
			left := d.ok("ps", "-aq", "--no-trunc")
			for _, id := range doomed {
				if strings.Contains(left, id) {
					t.Errorf("container %s of the session is left:\n%s", id, left)
				}
			}
			if !strings.Contains(left, spared) || !strings.Contains(left, ryuk) {
				t.Errorf("the other session's container or the reaper's own was removed:\n%s", left)
			}
			if !strings.Contains(logb.String(), "2 containers") {
				t.Errorf("the reaper's log:\n%s", logb.String())
			}
			d.ok("rm", "-f", spared, ryuk)
		})
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestEngineTestcontainers runs testcontainers-go v0.45.0 (e2e/tcclient, a separate process:
// a testcontainers session lasts as long as its process) against the engine with ryuk
// enabled: it starts a busybox httpd with an exposed port and fetches its page through the
// mapped port; once the client has exited, ryuk (moatc's reaper image) removes the container
// and then itself.
func TestEngineTestcontainers(t *testing.T) {
	client := filepath.Join(home, "tcclient")
	if out, err := exec.Command("go", "build", "-C", repo, "-o", client, "./e2e/tcclient").CombinedOutput(); err != nil {
		t.Fatalf("building e2e/tcclient: %v\n%s", err, out)
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			eng, d := tcEngine(t, rt, "moatc-engine-tc-"+rt)
			cmd := exec.Command(client)
			cmd.Env = append(os.Environ(), "HOME="+t.TempDir(), "DOCKER_HOST=unix://"+eng.sock,
				"TESTCONTAINERS_HOST_OVERRIDE="+tcPortsAddress(t, d),
				"TESTCONTAINERS_RYUK_RECONNECTION_TIMEOUT=5s")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				t.Fatalf("tcclient: %v\n%s%s", err, stdout.String(), stderr.String())
			}
			var seen struct{ ID, Endpoint, Body string }
			if err := json.Unmarshal(stdout.Bytes(), &seen); err != nil || seen.Body != "hello-from-testcontainers\n" {
				t.Fatalf("tcclient saw %q (%v)\n%s", stdout.String(), err, stderr.String())
			}
			t.Logf("tcclient saw %s%s", stdout.String(), stderr.String())
			if !strings.Contains(stderr.String(), "testcontainers/ryuk:0.14.0") {
				t.Errorf("the session ran no reaper:\n%s", stderr.String())
			}
			// The client has gone, and its container is still there: only ryuk removes it, after
			// its reconnection timeout, then ends (and is auto-removed).
			if ps := d.ok("ps", "-q", "--no-trunc", "--filter", "label=org.testcontainers=true"); !strings.Contains(ps, seen.ID) || strings.Count(ps, "\n") != 2 {
				t.Errorf("right after the session, its container and ryuk should be running:\n%s", ps)
			}
			deadline := time.Now().Add(90 * time.Second)
			for {
				out := d.ok("ps", "-aq", "--no-trunc")
				if strings.TrimSpace(out) == "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("left after the session ended (httpd was %s):\n%s", seen.ID, d.ok("ps", "-a"))
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
}

// tcPortsAddress is where published ports are reached from here: the .254 "ports address" of
// the engine's bridge network (docs/engine-api.md).
func tcPortsAddress(t *testing.T, d *dockerCLI) string {
	t.Helper()
	subnet := strings.TrimSpace(d.ok("network", "inspect", "bridge", "--format", "{{(index .IPAM.Config 0).Subnet}}"))
	_, n, err := net.ParseCIDR(subnet)
	if err != nil || n.IP.To4() == nil {
		t.Fatalf("the bridge network's subnet %q: %v", subnet, err)
	}
	ip := n.IP.To4()
	ip[3] = 254
	return ip.String()
}
