package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestEngine drives `moatc _engine` (the Docker Engine API on containerd, issue 10) with the
// real Docker CLI (29.9.3, built by `make setup` into the prefix) and with raw HTTP, under both
// runtimes. Each engine has its own namespace and is --ephemeral: once it is stopped, the
// namespace and everything in it must be gone.
func TestEngine(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ns := "moatc-engine-e2e-" + rt
			// The first engine leaves the namespace as it is when it stops (as docker:host's
			// will); the second takes it over and removes it all (as docker:dind's will).
			eng := startEngine(t, rt, ns, false)
			t.Cleanup(func() {
				eng.stop(t) // whichever engine runs last (a no-op once stopped)
				if t.Failed() {
					t.Logf("the last engine's stderr:\n%s", eng.stderr)
				}
			})
			d := &dockerCLI{t: t, bin: docker, env: []string{"DOCKER_HOST=unix://" + eng.sock, "DOCKER_CONFIG=" + t.TempDir()}}

			t.Run("version", func(t *testing.T) {
				d.t = t
				out := d.ok("version", "--format", "{{.Server.APIVersion}} {{.Server.Os}} {{(index .Server.Components 0).Name}}")
				if out != "1.57 linux Engine\n" {
					t.Errorf("docker version: %q", out)
				}
				if out := d.ok("version"); !strings.Contains(out, "Server: moatc") || !strings.Contains(out, "minimum version 1.24") {
					t.Errorf("docker version:\n%s", out)
				}
			})
			t.Run("info", func(t *testing.T) {
				d.t = t
				out := d.ok("info")
				if !strings.Contains(out, "Default Runtime: "+rt) || !strings.Contains(out, "Images: 1") || strings.Contains(out, "ERROR") {
					t.Errorf("docker info:\n%s", out)
				}
			})
			t.Run("run", func(t *testing.T) {
				d.t = t
				if out := d.ok("run", "--rm", "busybox", "echo", "hi"); out != "hi\n" {
					t.Errorf("run --rm busybox echo hi: %q", out)
				}
				if r := d.run("", "run", "--rm", "busybox", "sh", "-c", "exit 7"); r.code != 7 {
					t.Errorf("the exit code is not passed through: %+v", r)
				}
				if r := d.run("", "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2"); r.code != 0 || r.stdout != "out\n" || r.stderr != "err\n" {
					t.Errorf("stdout and stderr must stay apart: %+v", r)
				}
				if r := d.run("hello\nworld\n", "run", "--rm", "-i", "busybox", "wc", "-l"); r.code != 0 || strings.TrimSpace(r.stdout) != "2" {
					t.Errorf("stdin through attach: %+v", r)
				}
				// -it under a terminal: stdin and a TTY, both through the hijacked attach.
				tty := exec.Command("script", "-qec", d.bin+` run --rm -it busybox sh -c 'test -t 0 && test -t 1 && echo has-tty; read x; echo got $x; exit 3'`, "/dev/null")
				tty.Env = append(os.Environ(), d.env...)
				tty.Stdin = strings.NewReader("hello\n")
				out, err := tty.CombinedOutput()
				if code := exitCodeOf(err); code != 3 || !strings.Contains(string(out), "has-tty") || !strings.Contains(string(out), "got hello") {
					t.Errorf("run -it: exit %d, %q", code, out)
				}
				if r := d.run("", "run", "--rm", "busybox", "nosuchcommand"); r.code != 127 {
					t.Errorf("a command not found is 127: %+v", r)
				}
				// --rm removed them all.
				if out := d.ok("ps", "-a", "-q"); out != "" {
					t.Errorf("run --rm left containers: %q", out)
				}
			})
			t.Run("detached", func(t *testing.T) {
				d.t = t
				id := strings.TrimSpace(d.ok("run", "-d", "--name", "e2e-web", "--label", "e2e=web", "busybox", "sh", "-c",
					`trap 'echo bye; exit 3' TERM; i=0; while :; do echo line $i; i=$((i+1)); sleep 0.2; done`))
				if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(id) {
					t.Fatalf("run -d printed %q, not an id", id)
				}
				// logs -f follows until the container stops, then ends by itself.
				logs := exec.Command(d.bin, "logs", "-f", "e2e-web")
				logs.Env = append(os.Environ(), d.env...)
				out, err := logs.StdoutPipe()
				if err != nil {
					t.Fatal(err)
				}
				if err := logs.Start(); err != nil {
					t.Fatal(err)
				}
				lines := make(chan string, 1000)
				go func() {
					s := bufio.NewScanner(out)
					for s.Scan() {
						lines <- s.Text()
					}
					close(lines)
				}()
				waitLine(t, lines, "line 3")
				if out := d.ok("ps", "--filter", "name=e2e-web", "--format", "{{.Names}} {{.State}}"); out != "e2e-web running\n" {
					t.Errorf("ps --filter name= of a running container: %q", out)
				}
				if out := d.ok("stop", "-t", "5", "e2e-web"); out != "e2e-web\n" {
					t.Errorf("stop: %q", out)
				}
				waitLine(t, lines, "bye")
				ended := make(chan error, 1)
				go func() { ended <- logs.Wait() }()
				select {
				case err := <-ended:
					if err != nil {
						t.Errorf("logs -f: %v", err)
					}
				case <-time.After(20 * time.Second):
					logs.Process.Kill()
					t.Errorf("logs -f did not end when the container stopped")
				}
				if out := d.ok("ps", "-a", "--filter", "name=e2e-web", "--format", "{{.Names}} {{.Status}}"); !strings.HasPrefix(out, "e2e-web Exited (3) ") {
					t.Errorf("ps -a --filter name=: %q", out)
				}
				if out := d.ok("ps", "-a", "-q", "--no-trunc", "--filter", "label=e2e=web", "--filter", "status=exited"); out != id+"\n" {
					t.Errorf("ps -a --filter label= --filter status=: %q, want %s", out, id)
				}
				if out := d.ok("ps", "-q", "--filter", "label=e2e=web"); out != "" {
					t.Errorf("ps without -a lists a stopped container: %q", out)
				}
				var insp []struct {
					ID    string `json:"Id"`
					Name  string
					Image string
					State struct {
						Status   string
						Running  bool
						ExitCode int
					}
					Config struct {
						Image  string
						Labels map[string]string
					}
				}
				if err := json.Unmarshal([]byte(d.ok("inspect", "e2e-web")), &insp); err != nil || len(insp) != 1 {
					t.Fatalf("inspect: %v %+v", err, insp)
				}
				if c := insp[0]; c.ID != id || c.Name != "/e2e-web" || c.State.Status != "exited" || c.State.Running || c.State.ExitCode != 3 ||
					c.Config.Image != "busybox" || c.Config.Labels["e2e"] != "web" || !strings.HasPrefix(c.Image, "sha256:") {
					t.Errorf("inspect: %+v", c)
				}
				if out := d.ok("logs", "--tail", "1", "e2e-web"); out != "bye\n" {
					t.Errorf("logs --tail 1: %q", out)
				}
				if out := d.ok("rm", "e2e-web"); out != "e2e-web\n" {
					t.Errorf("rm: %q", out)
				}
				if out := d.ok("ps", "-a", "-q", "--filter", "name=e2e-web"); out != "" {
					t.Errorf("the container is still listed after rm: %q", out)
				}
				if r := d.run("", "inspect", "--type", "container", "e2e-web"); r.code == 0 || !strings.Contains(r.stderr, "No such container") {
					t.Errorf("inspect after rm: %+v", r)
				}
			})
			t.Run("kill-and-conflicts", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "--name", "e2e-sleep", "busybox", "sleep", "300")
				if r := d.run("", "run", "-d", "--name", "e2e-sleep", "busybox", "true"); r.code != 125 || !strings.Contains(r.stderr, `Conflict. The container name "/e2e-sleep" is already in use`) {
					t.Errorf("a name in use: %+v", r)
				}
				if r := d.run("", "rm", "e2e-sleep"); r.code == 0 || !strings.Contains(r.stderr, "container is running") {
					t.Errorf("rm of a running container without -f: %+v", r)
				}
				d.ok("kill", "e2e-sleep")
				if out := d.ok("wait", "e2e-sleep"); out != "137\n" {
					t.Errorf("wait after kill: %q", out)
				}
				d.ok("start", "e2e-sleep")
				d.ok("rm", "-f", "e2e-sleep")
				if out := d.ok("ps", "-a", "-q"); out != "" {
					t.Errorf("rm -f left %q", out)
				}
			})
			t.Run("events", func(t *testing.T) {
				d.t = t
				testEngineEvents(t, d)
			})
			t.Run("pull-confined", func(t *testing.T) {
				d.t = t
				// Pulls leave from the host, not the run: a registry on the host or an internal
				// network is refused before containerd is asked.
				for _, ref := range []string{"127.0.0.1:5000/x:y", "localhost:5000/x:y", "169.254.169.254/x:y", "10.0.0.1/x:y", "[::1]:5000/x:y"} {
					r := d.run("", "pull", ref)
					if r.code == 0 || !strings.Contains(r.stderr, "moatc refuses to pull from") {
						t.Errorf("docker pull %s: must be refused: %+v", ref, r)
					}
				}
			})
			t.Run("missing-image", func(t *testing.T) {
				d.t = t
				r := d.run("", "run", "--rm", "moatc-e2e/no-such-image:1", "true")
				if r.code != 125 || !strings.Contains(r.stderr, "Unable to find image 'moatc-e2e/no-such-image:1' locally") ||
					!strings.Contains(r.stderr, "Error response from daemon: ") || !strings.Contains(r.stderr, "moatc-e2e/no-such-image") {
					t.Errorf("a missing image: the CLI must try to pull it and say why that failed: %+v", r)
				}
			})
			t.Run("http", func(t *testing.T) {
				testEngineHTTP(t, eng.sock)
			})
			t.Run("logs-client-leaves", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "--name", "e2e-chatty", "busybox", "sh", "-c", "while :; do echo tick; sleep 0.1; done")
				// A quiet one: nothing is written that would find a gone client out.
				d.ok("run", "-d", "--name", "e2e-quiet", "busybox", "sh", "-c", "echo tick; exec sleep 300")
				fds := func() int {
					ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", eng.cmd.Process.Pid))
					return len(ents)
				}
				time.Sleep(500 * time.Millisecond) // the CLI's connections are closed
				before := fds()
				for i := 0; i < 3; i++ {
					for _, req := range []string{
						"GET /v1.44/containers/e2e-chatty/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: docker\r\n\r\n",
						"GET /v1.44/containers/e2e-quiet/logs?follow=1&stdout=1 HTTP/1.1\r\nHost: docker\r\n\r\n",
						"POST /v1.44/containers/e2e-chatty/attach?stream=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
						"POST /v1.44/containers/e2e-quiet/attach?stream=1&logs=1&stdout=1&stderr=1 HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
					} {
						conn, err := net.Dial("unix", eng.sock)
						if err != nil {
							t.Fatal(err)
						}
						io.WriteString(conn, req)
						conn.SetReadDeadline(time.Now().Add(10 * time.Second))
						var got []byte
						buf := make([]byte, 4096)
						for !bytes.Contains(got, []byte("tick")) {
							n, err := conn.Read(buf)
							got = append(got, buf[:n]...)
							if err != nil {
								t.Errorf("%s: %v %q", strings.Fields(req)[1], err, got)
								break
							}
						}
						conn.Close() // in the middle of the stream
					}
				}
				// The engine lets go of each stream: its open files come back to what they were.
				deadline := time.Now().Add(10 * time.Second)
				for fds() > before && time.Now().Before(deadline) {
					time.Sleep(100 * time.Millisecond)
				}
				if n := fds(); n > before {
					t.Errorf("the engine holds %d files after clients left mid-stream, %d before", n, before)
				}
				if r := engineGet(t, eng.sock, "/_ping"); r.code != 200 || r.body != "OK" {
					t.Errorf("the engine does not answer after clients left mid-stream: %+v", r)
				}
				if out := d.ok("ps", "--format", "{{.Names}}"); out != "e2e-quiet\ne2e-chatty\n" {
					t.Errorf("ps after clients left: %q", out)
				}
				d.ok("rm", "-f", "e2e-chatty", "e2e-quiet")
			})

			t.Run("engine-restart", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "--name", "e2e-survivor", "busybox", "sh", "-c",
					`trap 'echo bye; exit 5' TERM; i=0; while :; do echo n $i; i=$((i+1)); sleep 0.1; done`)
				d.ok("create", "--name", "e2e-created", "busybox", "echo", "from-created")
				eng.stop(t)
				time.Sleep(500 * time.Millisecond) // output written while no engine runs
				eng = startEngine(t, rt, ns, true)
				if out := d.ok("ps", "-a", "--format", "{{.Names}} {{.State}}"); out != "e2e-created created\ne2e-survivor running\n" {
					t.Errorf("the next engine does not see the containers as they are: %q", out)
				}
				d.ok("stop", "-t", "5", "e2e-survivor")
				logs := d.ok("logs", "e2e-survivor")
				if !strings.Contains(logs, "n 0\n") || !strings.HasSuffix(logs, "bye\n") || strings.Count(logs, "\n") < 8 {
					t.Errorf("the log across the engine's restart: %q", logs)
				}
				if out := d.ok("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "e2e-survivor"); out != "exited 5\n" {
					t.Errorf("the end of a container started by the engine before: %q", out)
				}
				if out := d.ok("start", "-a", "e2e-created"); out != "from-created\n" {
					t.Errorf("start -a of a container created by the engine before: %q", out)
				}
			})

			eng.stop(t)
			// Nothing is left: no namespace (containerd refuses to delete one that still holds
			// anything: containers, images, snapshots, content, leases), no state, no empty
			// directory of the namespace in containerd's or runsc's state.
			out, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "namespaces", "ls", "-q").Output()
			if err != nil {
				t.Fatalf("ctr namespaces ls: %v", err)
			}
			if strings.Contains(string(out), ns) {
				t.Errorf("namespace %s is left after the engine stopped:\n%s", ns, out)
			}
			left, _ := filepath.Glob("/run/moatc/runsc/*/" + ns)
			for _, dir := range []string{filepath.Join(home, "engine", ns), filepath.Join(home, "containerd", "state", "io.containerd.runtime.v2.task", ns)} {
				if _, err := os.Stat(dir); !os.IsNotExist(err) {
					left = append(left, dir)
				}
			}
			for _, dir := range left {
				if b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "home")); err == nil && strings.TrimSpace(string(b)) != home {
					continue // another home's runsc root
				}
				t.Errorf("left after the engine stopped: %s", dir)
			}
		})
	}
}

// testEngineHTTP speaks to the engine without a Docker client.
func testEngineHTTP(t *testing.T, sock string) {
	if r := engineGet(t, sock, "/v1.24/_ping"); r.code != 200 || r.body != "OK" || r.header.Get("Api-Version") != "1.57" {
		t.Errorf("/v1.24/_ping (an old client): %+v", r)
	}
	var v struct{ ApiVersion, MinAPIVersion string }
	if r := engineGet(t, sock, "/v1.99/version"); r.code != 200 || json.Unmarshal([]byte(r.body), &v) != nil || v.ApiVersion != "1.57" || v.MinAPIVersion != "1.24" {
		t.Errorf("/v1.99/version (a client newer than the engine is not refused): %+v", r)
	}
	check := func(what string, r httpResult, code int, msg string) {
		t.Helper()
		var e struct{ Message string }
		if r.code != code || r.header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(r.body), &e) != nil || !strings.Contains(e.Message, msg) {
			t.Errorf("%s: want %d {\"message\": ...%s...}, got %+v", what, code, msg, r)
		}
	}
	check("an unknown endpoint", httpDo(t, sock, "POST", "/v1.44/swarm/init", "", nil), 501, "moatc does not support POST /swarm/init yet")
	check("malformed JSON", httpDo(t, sock, "POST", "/v1.44/containers/create", "application/json", strings.NewReader(`{"Image":`)), 400, "invalid JSON")
	check("unknown fields are ignored, a missing image is 404", httpDo(t, sock, "POST", "/v1.44/containers/create", "application/json",
		strings.NewReader(`{"Image":"moatc-e2e/none","FieldOfTheFuture":{"x":1}}`)), 404, "No such image: moatc-e2e/none:latest")
	big := `{"Image":"busybox","Env":["X=` + strings.Repeat("a", 2<<20) + `"]}`
	r := httpDo(t, sock, "POST", "/v1.44/containers/create", "application/json", strings.NewReader(big))
	if r.err == nil {
		check("a 2 MiB create body", r, 413, "larger than moatc accepts")
	} else if !strings.Contains(r.err.Error(), "broken pipe") && !strings.Contains(r.err.Error(), "connection reset") {
		t.Errorf("a 2 MiB create body: %v", r.err)
	}
	if r := engineGet(t, sock, "/_ping"); r.code != 200 {
		t.Errorf("the engine does not answer after the bad requests: %+v", r)
	}
}

type httpResult struct {
	code   int
	header http.Header
	body   string
	err    error
}

func httpDo(t *testing.T, sock, method, path, contentType string, body io.Reader) httpResult {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	req, err := http.NewRequest(method, "http://docker"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	if err != nil {
		return httpResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

func engineGet(t *testing.T, sock, path string) httpResult {
	t.Helper()
	return httpDo(t, sock, "GET", path, "", nil)
}

// engineProc is a running `moatc _engine`.
type engineProc struct {
	sock    string
	cmd     *exec.Cmd
	stderr  *bytes.Buffer
	done    chan error
	stopped bool
}

// startEngine starts an engine for runtime rt in namespace ns, busybox copied in from moatc's
// store, and waits until it answers. An ephemeral one removes the namespace when it stops.
// The caller stops it.
func startEngine(t *testing.T, rt, ns string, ephemeral bool) *engineProc {
	t.Helper()
	args := append([]string{"--namespace", ns, "--image", "busybox"}, sandboxArgs(rt)...)
	if ephemeral {
		args = append(args, "--ephemeral")
	}
	return launchEngine(t, filepath.Join(home, "engine-"+rt+".sock"), args...)
}

// stopAtCleanup stops the engine when the test ends, and shows its stderr if the test failed.
func (e *engineProc) stopAtCleanup(t *testing.T) {
	t.Cleanup(func() {
		e.stop(t)
		if t.Failed() {
			t.Logf("the engine's stderr:\n%s", e.stderr)
		}
	})
}

// cli is the Docker CLI pointed at the engine, with a configuration of its own.
func (e *engineProc) cli(t *testing.T, docker string) *dockerCLI {
	return &dockerCLI{t: t, bin: docker, env: []string{"DOCKER_HOST=unix://" + e.sock, "DOCKER_CONFIG=" + t.TempDir()}}
}

// requireDockerCLI is the Docker CLI `make setup` builds into the prefix; a test without it
// fails in CI and is skipped elsewhere.
func requireDockerCLI(t *testing.T) string {
	t.Helper()
	docker := filepath.Join(prefix, "bin", "docker")
	if _, err := os.Stat(docker); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the Docker CLI is not installed in %s (run `make setup`): %v", prefix, err)
		}
		t.Skipf("the Docker CLI is not installed in %s (run `make setup`; never skipped in CI): %v", prefix, err)
	}
	return docker
}

// launchEngine starts `moatc _engine --socket SOCK ARGS...` and waits until it answers /_ping.
// The caller stops it.
func launchEngine(t *testing.T, sock string, args ...string) *engineProc {
	t.Helper()
	e := &engineProc{sock: sock, stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	e.cmd = exec.Command(moatc, append([]string{"_engine", "--socket", sock}, args...)...)
	e.cmd.Stderr = e.stderr
	if err := e.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.done <- e.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-e.done:
			t.Fatalf("moatc _engine exited: %v\n%s", err, e.stderr)
		default:
		}
		if r := engineGet(t, e.sock, "/_ping"); r.err == nil && r.code == 200 {
			return e
		}
		if time.Now().After(deadline) {
			e.stop(t)
			t.Fatalf("moatc _engine does not answer on %s\n%s", e.sock, e.stderr)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the engine to tear its namespace down and exit 0.
func (e *engineProc) stop(t *testing.T) {
	t.Helper()
	if e.stopped {
		return
	}
	e.stopped = true
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-e.done:
		if err != nil {
			t.Errorf("moatc _engine ended with %v\n%s", err, e.stderr)
		}
		if strings.Contains(e.stderr.String(), "panic") {
			t.Errorf("moatc _engine panicked:\n%s", e.stderr)
		}
	case <-time.After(2 * time.Minute):
		e.cmd.Process.Kill()
		<-e.done
		t.Errorf("moatc _engine did not stop within 2 minutes of SIGTERM\n%s", e.stderr)
	}
}

// dockerCLI runs the Docker CLI against an engine.
type dockerCLI struct {
	t   *testing.T
	bin string
	env []string
}

func (d *dockerCLI) run(stdin string, args ...string) result {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, args...)
	cmd.Env = append(os.Environ(), d.env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := exitCodeOf(err)
	if code == -1 {
		d.t.Fatalf("docker %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// ok runs docker and fails the test unless it exits 0; it returns stdout.
func (d *dockerCLI) ok(args ...string) string {
	d.t.Helper()
	r := d.run("", args...)
	if r.code != 0 {
		d.t.Fatalf("docker %v: exit %d\nstdout: %s\nstderr: %s", args, r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// waitLine reads lines until one is want.
func waitLine(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the stream ended before %q", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("%q did not come within 30 s", want)
		}
	}
}
