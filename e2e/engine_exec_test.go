package e2e

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEngineExec drives exec, top, cp (archive) and container prune of `moatc _engine` with
// the real Docker CLI, under both runtimes.
func TestEngineExec(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			eng := startEngine(t, rt, "moatc-engine-exec-e2e-"+rt, true)
			eng.stopAtCleanup(t)
			d := eng.cli(t, docker)
			since := time.Now().Add(-time.Second).Unix()
			d.ok("run", "-d", "--name", "ex", "busybox", "sleep", "300")

			t.Run("exec", func(t *testing.T) {
				d.t = t
				if out := d.ok("exec", "ex", "echo", "hi"); out != "hi\n" {
					t.Errorf("exec echo hi: %q", out)
				}
				if r := d.run("", "exec", "ex", "sh", "-c", "exit 3"); r.code != 3 {
					t.Errorf("the exit code is not passed through: %+v", r)
				}
				if r := d.run("", "exec", "ex", "sh", "-c", "echo out; echo err >&2"); r.code != 0 || r.stdout != "out\n" || r.stderr != "err\n" {
					t.Errorf("stdout and stderr must stay apart: %+v", r)
				}
				if out := d.ok("exec", "-e", "FOO=bar baz", "ex", "sh", "-c", "echo $FOO"); out != "bar baz\n" {
					t.Errorf("exec -e: %q", out)
				}
				if out := d.ok("exec", "-w", "/etc", "ex", "pwd"); out != "/etc\n" {
					t.Errorf("exec -w: %q", out)
				}
				if out := d.ok("exec", "-u", "1234:5678", "ex", "sh", "-c", "id -u; id -g"); out != "1234\n5678\n" {
					t.Errorf("exec -u: %q", out)
				}
				if out := d.ok("exec", "-u", "nobody", "ex", "id", "-un"); out != "nobody\n" {
					t.Errorf("exec -u nobody: %q", out)
				}
				if r := d.run("hello\nworld\n", "exec", "-i", "ex", "wc", "-l"); r.code != 0 || strings.TrimSpace(r.stdout) != "2" {
					t.Errorf("exec -i: %+v", r)
				}
				if r := d.run("", "exec", "ex", "nosuchcommand"); r.code != 127 {
					t.Errorf("a command not found is 127: %+v", r)
				}
				tty := exec.Command("script", "-qec", d.bin+` exec -it ex sh -c 'test -t 0 && test -t 1 && echo has-tty; read x; echo got $x; exit 4'`, "/dev/null")
				tty.Env = append(os.Environ(), d.env...)
				tty.Stdin = strings.NewReader("hello\n")
				out, err := tty.CombinedOutput()
				if code := exitCodeOf(err); code != 4 || !strings.Contains(string(out), "has-tty") || !strings.Contains(string(out), "got hello") {
					t.Errorf("exec -it: exit %d, %q", code, out)
				}
				// -d: in the background; the CLI returns at once.
				d.ok("exec", "-d", "ex", "sh", "-c", "sleep 0.5; echo bg > /tmp/bg")
				deadline := time.Now().Add(20 * time.Second)
				for {
					if r := d.run("", "exec", "ex", "cat", "/tmp/bg"); r.code == 0 && r.stdout == "bg\n" {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("exec -d: the command did not run")
					}
					time.Sleep(200 * time.Millisecond)
				}
				if r := d.run("", "exec", "--privileged", "ex", "true"); r.code == 0 || !strings.Contains(r.stderr, "refuses") {
					t.Errorf("exec --privileged must be refused: %+v", r)
				}
				if r := d.run("", "exec", "nosuch", "true"); r.code == 0 || !strings.Contains(r.stderr, "No such container") {
					t.Errorf("exec in a missing container: %+v", r)
				}
				// A client that leaves: the command runs on to its end, as with Docker.
				gone := exec.Command(d.bin, "exec", "ex", "sh", "-c", "sleep 1; echo done > /tmp/left")
				gone.Env = append(os.Environ(), d.env...)
				gone.Start()
				time.Sleep(300 * time.Millisecond)
				gone.Process.Kill()
				gone.Wait()
				time.Sleep(1500 * time.Millisecond)
				if out := d.ok("exec", "ex", "cat", "/tmp/left"); out != "done\n" {
					t.Errorf("an exec whose client left: %q", out)
				}
				if r := httpDo(t, eng.sock, "POST", "/v1.44/containers/ex/exec", "application/json", strings.NewReader(`{"Cmd":["true"],"Privileged":true}`)); r.code != 403 || !strings.Contains(r.body, `"message"`) {
					t.Errorf("exec create, Privileged: %d %s", r.code, r.body)
				}
				if r := httpDo(t, eng.sock, "POST", "/v1.44/containers/ex/exec", "application/json", strings.NewReader(`{"Cmd":[]}`)); r.code != 400 {
					t.Errorf("exec create without a command: %d %s", r.code, r.body)
				}
				if r := httpDo(t, eng.sock, "GET", "/exec/nosuch/json", "", nil); r.code != 404 {
					t.Errorf("inspect of a missing exec: %d %s", r.code, r.body)
				}
			})

			t.Run("top", func(t *testing.T) {
				d.t = t
				out := d.ok("top", "ex")
				if !strings.Contains(out, "PID") || !strings.Contains(out, "sleep") {
					t.Errorf("docker top:\n%s", out)
				}
			})

			t.Run("cp-running", func(t *testing.T) {
				d.t = t
				engineArchiveRoundTrip(t, d, "ex")
			})

			t.Run("events", func(t *testing.T) {
				d.t = t
				out := d.ok("events", "--since", strconv.FormatInt(since, 10), "--until", strconv.FormatInt(time.Now().Unix()+1, 10), "--filter", "container=ex", "--format", "{{.Action}}")
				for _, want := range []string{"exec_create: echo hi", "exec_start: echo hi", "exec_die", "archive-path", "extract-to-dir"} {
					if !strings.Contains(out, want+"\n") && !strings.Contains(out, want) {
						t.Errorf("events: no %q in\n%s", want, out)
					}
				}
			})

			t.Run("stopped", func(t *testing.T) {
				d.t = t
				d.ok("stop", "-t", "0", "ex")
				if r := d.run("", "exec", "ex", "true"); r.code == 0 || !strings.Contains(r.stderr, "is not running") {
					t.Errorf("exec in a stopped container: %+v", r)
				}
				if r := httpDo(t, eng.sock, "POST", "/containers/ex/exec", "application/json", strings.NewReader(`{"Cmd":["true"]}`)); r.code != 409 {
					t.Errorf("exec create in a stopped container: %d %s", r.code, r.body)
				}
				if r := httpDo(t, eng.sock, "HEAD", "/containers/ex/archive?path=/etc/passwd", "", nil); r.code != 200 || r.header.Get("X-Docker-Container-Path-Stat") == "" {
					t.Errorf("HEAD archive of a stopped container: %d %v", r.code, r.header)
				}
				if r := d.run("", "top", "ex"); r.code == 0 || !strings.Contains(r.stderr, "is not running") {
					t.Errorf("top of a stopped container: %+v", r)
				}
				engineArchiveRoundTrip(t, d, "ex")
				d.ok("create", "--name", "created", "busybox", "true")
				engineArchiveRoundTrip(t, d, "created")
				// A file of the image, read from the snapshot.
				dir := t.TempDir()
				d.ok("cp", "created:/etc/passwd", dir)
				if b, err := os.ReadFile(filepath.Join(dir, "passwd")); err != nil || !strings.Contains(string(b), "root:") {
					t.Errorf("cp of the image's /etc/passwd from a created container: %q %v", b, err)
				}
			})

			t.Run("cp-confined", func(t *testing.T) {
				d.t = t
				// The host directory a hostile archive or link aims at.
				target := t.TempDir()
				os.WriteFile(filepath.Join(target, "secret"), []byte("host secret\n"), 0o600)
				evil := engineEvilTar(t, target)
				for _, name := range []string{"confined-run", "confined-stopped"} {
					d.ok("run", "-d", "--name", name, "busybox", "sh", "-c", "ln -s "+target+" /tmp/lnk; sleep 300")
					if name == "confined-stopped" {
						d.ok("stop", "-t", "0", name)
						// The link put into the snapshot by an archive (gVisor keeps the
						// container's own writes in its sandbox): kept as a link, not followed.
						var b bytes.Buffer
						tw := tar.NewWriter(&b)
						tw.WriteHeader(&tar.Header{Name: "lnk", Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
						tw.Close()
						d.run(b.String(), "cp", "-", name+":/tmp")
					}
					r := d.run(string(evil), "cp", "-", name+":/tmp")
					t.Logf("%s: cp of a hostile archive: %+v", name, r)
					if name == "confined-stopped" && (r.code == 0 || !strings.Contains(r.stderr, "refused")) {
						t.Errorf("a hostile archive into a stopped container must be refused: %+v", r)
					}
					hostFile := filepath.Join(t.TempDir(), "f")
					os.WriteFile(hostFile, []byte("x\n"), 0o644)
					r = d.run("", "cp", hostFile, name+":/tmp/lnk/")
					t.Logf("%s: cp through an absolute link: %+v", name, r)
					out := t.TempDir()
					if r := d.run("", "cp", name+":/tmp/lnk/secret", out); r.code == 0 {
						if b, _ := os.ReadFile(filepath.Join(out, "secret")); strings.Contains(string(b), "host secret") {
							t.Errorf("%s: cp read the host's file through a link in the container", name)
						}
					}
					entries, _ := os.ReadDir(target)
					if len(entries) != 1 {
						var names []string
						for _, e := range entries {
							names = append(names, e.Name())
						}
						t.Errorf("%s: the host directory was written: %v", name, names)
					}
					if m, _ := filepath.Glob(filepath.Join(home, "*", "escaped*")); len(m) > 0 {
						t.Errorf("%s: a ../ entry escaped: %v", name, m)
					}
					if found, _ := exec.Command("find", home, "/tmp", "-maxdepth", "6", "-name", "escaped-"+filepath.Base(target)).Output(); len(found) > 0 {
						t.Errorf("%s: a ../ entry escaped: %s", name, found)
					}
					d.ok("rm", "-f", name)
				}
			})

			// Execs created and never started are bounded; a removed container's go with it.
			t.Run("exec-bounds", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "--name", "xb", "busybox", "sleep", "300")
				var first string
				made, refused := 0, false
				for range 1100 {
					r := httpDo(t, eng.sock, "POST", "/v1.44/containers/xb/exec", "application/json", strings.NewReader(`{"Cmd":["true"]}`))
					if r.code == 409 && strings.Contains(r.body, "moatc's limit") {
						refused = true
						break
					}
					if r.code != 201 {
						t.Fatalf("exec create %d: %d %s %v", made, r.code, r.body, r.err)
					}
					if made == 0 {
						var resp struct{ Id string }
						json.Unmarshal([]byte(r.body), &resp)
						first = resp.Id
					}
					made++
				}
				if !refused || made < 1000 {
					t.Errorf("%d execs created, refused %v; want refused at 1024 pending", made, refused)
				}
				if r := engineGet(t, eng.sock, "/v1.44/exec/"+first+"/json"); r.code != 200 {
					t.Errorf("exec inspect of a pending exec: %d %s", r.code, r.body)
				}
				d.ok("rm", "-f", "xb")
				if r := engineGet(t, eng.sock, "/v1.44/exec/"+first+"/json"); r.code != 404 {
					t.Errorf("exec inspect after its container was removed: %d %s; want 404", r.code, r.body)
				}
			})

			// Restart policies: on-failure:2 restarts twice, always until stopped; --rm with one is 400.
			t.Run("restart-policy", func(t *testing.T) {
				d.t = t
				state := func(name string) string {
					return strings.TrimSpace(d.ok("inspect", "-f", "{{.RestartCount}} {{.State.Status}}", name))
				}
				await := func(name string, ok func(string) bool) string {
					var st string
					for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
						if st = state(name); ok(st) {
							return st
						}
					}
					t.Fatalf("%s never reached the state wanted; last %q", name, st)
					return st
				}
				d.ok("run", "-d", "--name", "rp", "--restart", "on-failure:2", "busybox", "sh", "-c", "echo ran; exit 3")
				await("rp", func(s string) bool { return s == "2 exited" })
				time.Sleep(2 * time.Second)
				if st := state("rp"); st != "2 exited" {
					t.Errorf("on-failure:2 after its retries: %q", st)
				}
				if n := strings.Count(d.ok("logs", "rp"), "ran\n"); n != 3 {
					t.Errorf("on-failure:2 ran %d times, want 3", n)
				}
				d.ok("run", "-d", "--name", "ra", "--restart", "always", "busybox", "sh", "-c", "sleep 1")
				await("ra", func(s string) bool { return !strings.HasPrefix(s, "0 ") && strings.HasSuffix(s, "running") })
				d.ok("stop", "-t", "1", "ra")
				time.Sleep(2 * time.Second)
				before := state("ra")
				time.Sleep(2 * time.Second)
				if after := state("ra"); !strings.HasSuffix(after, "exited") || after != before {
					t.Errorf("--restart always after docker stop: %q then %q; want it to stay exited", before, after)
				}
				if r := d.run("", "run", "--rm", "--restart", "always", "busybox", "true"); r.code == 0 || !strings.Contains(r.stderr, "conflicting options") {
					t.Errorf("--rm with --restart: %+v", r)
				}
				d.ok("rm", "-f", "rp", "ra")
			})

			// Health checks: starting, then healthy when the test passes, unhealthy after
			// Retries failures; ps shows it, the health filter and events see it.
			t.Run("health", func(t *testing.T) {
				d.t = t
				since := time.Now().Add(-time.Second).Unix()
				d.ok("run", "-d", "--name", "hc", "--health-cmd", "test -f /tmp/ok", "--health-interval", "300ms",
					"--health-retries", "2", "busybox", "sleep", "300")
				health := func() string { return strings.TrimSpace(d.ok("inspect", "-f", "{{.State.Health.Status}}", "hc")) }
				await := func(want string) {
					for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
						if health() == want {
							return
						}
					}
					t.Fatalf("health never became %s: %s", want, d.ok("inspect", "-f", "{{json .State.Health}}", "hc"))
				}
				await("unhealthy")
				d.ok("exec", "hc", "touch", "/tmp/ok")
				await("healthy")
				if out := d.ok("ps", "--filter", "health=healthy", "--format", "{{.Names}} {{.Status}}"); !strings.Contains(out, "hc Up") || !strings.Contains(out, "(healthy)") {
					t.Errorf("ps --filter health=healthy: %q", out)
				}
				if out := d.ok("inspect", "-f", "{{range .State.Health.Log}}{{.ExitCode}} {{end}}", "hc"); !strings.Contains(out, "1 ") || !strings.HasSuffix(strings.TrimSpace(out), "0") {
					t.Errorf("health log exit codes: %q", out)
				}
				ev := d.ok("events", "--since", fmt.Sprint(since), "--until", fmt.Sprint(time.Now().Unix()+1), "--filter", "container=hc", "--format", "{{.Action}}")
				if !strings.Contains(ev, "health_status: unhealthy") || !strings.Contains(ev, "health_status: healthy") {
					t.Errorf("events lack the health status changes:\n%s", ev)
				}
				d.ok("rm", "-f", "hc")
				if r := d.run("", "run", "--rm", "--health-cmd", "true", "--health-interval", "1us", "busybox", "true"); r.code == 0 {
					t.Errorf("a health interval of 1us: %+v; want refused", r)
				}
			})

			t.Run("rename", func(t *testing.T) {
				d.t = t
				d.ok("create", "--name", "rn-a", "busybox", "true")
				d.ok("create", "--name", "rn-b", "busybox", "true")
				if out := d.ok("ps", "-a", "--filter", "since=rn-a", "--format", "{{.Names}}"); !strings.Contains(out, "rn-b") || strings.Contains(out, "rn-a") {
					t.Errorf("ps --filter since=rn-a: %q", out)
				}
				if out := d.ok("ps", "-a", "--filter", "before=rn-b", "--format", "{{.Names}}"); !strings.Contains(out, "rn-a") || strings.Contains(out, "rn-b") {
					t.Errorf("ps --filter before=rn-b: %q", out)
				}
				if r := d.run("", "rename", "rn-a", "rn-b"); r.code == 0 || !strings.Contains(r.stderr, "already in use") {
					t.Errorf("rename onto a name in use: %+v", r)
				}
				d.ok("rename", "rn-a", "rn-c")
				if out := d.ok("ps", "-a", "--filter", "name=rn-", "--format", "{{.Names}}"); !strings.Contains(out, "rn-c") || strings.Contains(out, "rn-a") {
					t.Errorf("after rename: %q", out)
				}
				if r := d.run("", "container", "diff", "rn-c"); r.code == 0 || !strings.Contains(r.stderr, "moatc does not support") {
					t.Errorf("container diff must be 501: %+v", r)
				}
				d.ok("rm", "rn-b", "rn-c")

				// moatc.* labels are the workload's in its record only: containerd's labels
				// (the name moatc finds containers by after a restart, the run) stay moatc's.
				id := strings.TrimSpace(d.ok("create", "--name", "rl", "--label", "moatc.engine.name=evil", "--label", "moatc.run-id=evil", "--label", "mine=1", "busybox", "true"))
				if out := d.ok("inspect", "-f", "{{index .Config.Labels \"moatc.engine.name\"}}", "rl"); out != "evil\n" {
					t.Errorf("the record lost the workload's label: %q", out)
				}
				info, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "-n", "moatc-engine-exec-e2e-"+rt, "containers", "info", id).Output()
				if err != nil {
					t.Fatalf("ctr containers info %s: %v", id, err)
				}
				var ci struct{ Labels map[string]string }
				decodeJSON(t, string(info), &ci)
				if ci.Labels["moatc.engine.name"] != "rl" || ci.Labels["moatc.run-id"] == "evil" || ci.Labels["mine"] != "1" {
					t.Errorf("containerd's labels of a container created with moatc.* labels: %v", ci.Labels)
				}
				d.ok("rm", "rl")
			})

			t.Run("prune", func(t *testing.T) {
				d.t = t
				keep := strings.TrimSpace(d.ok("create", "--label", "e2e-prune=keep", "busybox", "true"))
				gone := strings.TrimSpace(d.ok("create", "--label", "e2e-prune=gone", "busybox", "true"))
				d.ok("run", "-d", "--name", "pr-running", "busybox", "sleep", "300")
				out := d.ok("container", "prune", "-f", "--filter", "label=e2e-prune=gone")
				if !strings.Contains(out, gone) || strings.Contains(out, keep) {
					t.Errorf("prune --filter label=: %q", out)
				}
				out = d.ok("container", "prune", "-f")
				if !strings.Contains(out, keep) {
					t.Errorf("prune: %q", out)
				}
				if left := d.ok("ps", "-a", "--format", "{{.Names}}"); left != "pr-running\n" {
					t.Errorf("prune left %q; only the running container must be left", left)
				}
				d.ok("rm", "-f", "pr-running")
			})
		})
	}
}

// engineArchiveRoundTrip copies a file and a directory into container c and back out.
func engineArchiveRoundTrip(t *testing.T, d *dockerCLI, c string) {
	t.Helper()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "file.txt"), []byte("content of "+c+"\n"), 0o640)
	os.MkdirAll(filepath.Join(src, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(src, "tree", "sub", "deep.txt"), []byte("deep\n"), 0o644)
	os.Symlink("sub/deep.txt", filepath.Join(src, "tree", "link"))
	d.ok("cp", filepath.Join(src, "file.txt"), c+":/tmp/")
	d.ok("cp", filepath.Join(src, "tree"), c+":/tmp/tree-"+c)
	d.ok("cp", filepath.Join(src, "file.txt"), c+":/tmp/renamed.txt")
	out := t.TempDir()
	d.ok("cp", c+":/tmp/file.txt", out)
	d.ok("cp", c+":/tmp/renamed.txt", filepath.Join(out, "back.txt"))
	d.ok("cp", c+":/tmp/tree-"+c, filepath.Join(out, "tree"))
	for _, f := range []string{"file.txt", "back.txt"} {
		if b, err := os.ReadFile(filepath.Join(out, f)); err != nil || string(b) != "content of "+c+"\n" {
			t.Errorf("%s: cp round trip of %s: %q %v", c, f, b, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(out, "file.txt")); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("%s: the mode is not kept: %v %v", c, fi, err)
	}
	if b, err := os.ReadFile(filepath.Join(out, "tree", "sub", "deep.txt")); err != nil || string(b) != "deep\n" {
		t.Errorf("%s: cp round trip of a directory: %q %v", c, b, err)
	}
	if l, err := os.Readlink(filepath.Join(out, "tree", "link")); err != nil || l != "sub/deep.txt" {
		t.Errorf("%s: a symlink is not kept: %q %v", c, l, err)
	}
	// To stdout: a tar of the path.
	r := d.run("", "cp", c+":/tmp/file.txt", "-")
	if tr := tar.NewReader(strings.NewReader(r.stdout)); r.code == 0 {
		h, err := tr.Next()
		if err != nil || h.Name != "file.txt" || h.Size != int64(len("content of "+c+"\n")) {
			t.Errorf("%s: cp to stdout: %+v %v", c, h, err)
		}
	} else {
		t.Errorf("%s: cp to stdout: %+v", c, r)
	}
	if r := d.run("", "cp", c+":/nope", out); r.code == 0 || !strings.Contains(r.stderr, "Could not find the file /nope in container") {
		t.Errorf("%s: cp of a missing path: %+v", c, r)
	}
}

// engineEvilTar is an archive that tries to write outside where it is extracted: a ../ entry,
// an absolute one, and a symlink to target followed by an entry through it.
func engineEvilTar(t *testing.T, target string) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	file := func(name string) {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: 6, Typeflag: tar.TypeReg})
		tw.Write([]byte("pwned\n"))
	}
	esc := "escaped-" + filepath.Base(target)
	file("../../../../../../../../" + esc)
	file("../" + esc)
	file(filepath.Join(target, "abs-pwned"))
	tw.WriteHeader(&tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
	file("evil/pwned")
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
