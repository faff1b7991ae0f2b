package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEngineVolumes: volumes, binds through the run's mounts and the engine's socket, with
// the real Docker CLI against `moatc _engine --mount /workspace=DIR`, under both runtimes.
func TestEngineVolumes(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := t.TempDir()
			os.MkdirAll(filepath.Join(ws, "sub"), 0o755)
			os.WriteFile(filepath.Join(ws, "sub", "hello"), []byte("from the host\n"), 0o644)
			os.Symlink("/etc", filepath.Join(ws, "etclink"))
			os.Symlink("../..", filepath.Join(ws, "uplink"))
			os.Symlink("sub", filepath.Join(ws, "inlink"))
			os.MkdirAll(filepath.Join(ws, "bin"), 0o755)
			if b, err := os.ReadFile(docker); err != nil {
				t.Fatal(err)
			} else if err := os.WriteFile(filepath.Join(ws, "bin", "docker"), b, 0o755); err != nil {
				t.Fatal(err)
			}
			eng := volStartEngine(t, rt, "moatc-engine-vol-e2e-"+rt, "--mount", "/workspace="+ws, "--mount", "/ro="+filepath.Join(ws, "sub")+":ro", "--socket-target", "/var/run/docker.sock")
			eng.stopAtCleanup(t)
			d := eng.cli(t, docker)
			since := time.Now().Add(-time.Second).Unix()

			t.Run("volume", func(t *testing.T) {
				d.t = t
				if out := d.ok("volume", "create", "--label", "e2e=vol", "shared"); out != "shared\n" {
					t.Errorf("volume create: %q", out)
				}
				d.ok("run", "--rm", "-v", "shared:/data", "busybox", "sh", "-c", "echo written > /data/f")
				if out := d.ok("run", "--rm", "--mount", "type=volume,src=shared,dst=/in", "busybox", "cat", "/in/f"); out != "written\n" {
					t.Errorf("the second container reads %q", out)
				}
				if out := d.ok("volume", "inspect", "--format", "{{.Name}} {{.Driver}} {{.Labels}} {{.Scope}}", "shared"); out != "shared local map[e2e:vol] local\n" {
					t.Errorf("volume inspect: %q", out)
				}
				if out := d.ok("volume", "ls", "-q", "--filter", "label=e2e=vol"); out != "shared\n" {
					t.Errorf("volume ls --filter label: %q", out)
				}
				d.ok("run", "-d", "--name", "holder", "-v", "shared:/data", "busybox", "sleep", "600")
				if r := d.run("", "volume", "rm", "shared"); r.code == 0 || !strings.Contains(r.stderr, "in use") {
					t.Errorf("volume rm of a volume in use: %+v", r)
				}
				if out := d.ok("volume", "ls", "-q", "--filter", "dangling=true"); strings.Contains(out, "shared") {
					t.Errorf("a volume in use is dangling: %q", out)
				}
				d.ok("rm", "-f", "holder")
				d.ok("volume", "rm", "shared")
				if r := d.run("", "volume", "inspect", "shared"); r.code == 0 || !strings.Contains(r.stderr, "no such volume") {
					t.Errorf("inspect of a removed volume: %+v", r)
				}
				// -v NAME makes the volume on first use; an anonymous one goes with rm -v.
				d.ok("run", "--rm", "-v", "auto:/d", "busybox", "true")
				d.ok("create", "--name", "anon", "-v", "/scratch", "busybox", "true")
				vols := strings.Fields(d.ok("volume", "ls", "-q"))
				if len(vols) != 2 || !strings.Contains(strings.Join(vols, " "), "auto") {
					t.Errorf("volumes after first use and an anonymous one: %v", vols)
				}
				d.ok("rm", "-v", "anon")
				if out := d.ok("volume", "ls", "-q"); out != "auto\n" {
					t.Errorf("rm -v left %q", out)
				}
				// prune removes only anonymous volumes unless --all.
				d.ok("run", "--rm", "-v", "/gone", "busybox", "true") // --rm removes its anonymous volume
				if out := d.ok("volume", "ls", "-q"); out != "auto\n" {
					t.Errorf("run --rm left %q", out)
				}
				d.ok("volume", "prune", "-f")
				if out := d.ok("volume", "ls", "-q"); out != "auto\n" {
					t.Errorf("prune without --all removed a named volume: %q", out)
				}
				if out := d.ok("volume", "prune", "-f", "--all"); !strings.Contains(out, "auto") {
					t.Errorf("volume prune --all: %q", out)
				}
				if out := d.ok("volume", "ls", "-q"); out != "" {
					t.Errorf("after prune: %q", out)
				}
				if r := d.run("", "volume", "create", "--opt", "type=nfs", "x"); r.code == 0 || !strings.Contains(r.stderr, "refuses") {
					t.Errorf("volume create --opt: %+v", r)
				}
			})

			// An empty volume is filled from the image's files at its mount path (mode kept),
			// not with nocopy, and not once it has content.
			t.Run("copy-up", func(t *testing.T) {
				d.t = t
				if out := d.ok("run", "--rm", "-v", "cu-etc:/etc", "-v", "cu-tmp:/tmp", "busybox", "sh", "-c", "head -1 /etc/passwd; stat -c %a /tmp"); out != "root:x:0:0:root:/root:/bin/sh\n1777\n" {
					t.Errorf("a new volume over /etc and /tmp: %q; want busybox's passwd and /tmp's mode 1777", out)
				}
				// (hosts and resolv.conf are the engine's mount points, made in the volume.)
				if out := d.ok("run", "--rm", "-v", "cu-no:/etc:nocopy", "busybox", "ls", "-A", "/etc"); out != "hosts\nresolv.conf\n" {
					t.Errorf("a nocopy volume: %q; want only the engine's mount points", out)
				}
				d.ok("run", "--rm", "-v", "cu-etc:/etc", "busybox", "sh", "-c", "rm -f /etc/group")
				if out := d.ok("run", "--rm", "-v", "cu-etc:/etc", "busybox", "ls", "/etc"); strings.Contains(out, "group") {
					t.Errorf("a volume with content was filled again: %q", out)
				}
				d.ok("volume", "rm", "cu-etc", "cu-tmp", "cu-no")
			})
			t.Run("bind", func(t *testing.T) {
				d.t = t
				out := d.ok("run", "--rm", "-v", "/workspace/sub:/data", "busybox", "sh", "-c", "cat /data/hello; echo from-container > /data/new")
				if out != "from the host\n" {
					t.Errorf("the bind shows %q", out)
				}
				if b, _ := os.ReadFile(filepath.Join(ws, "sub", "new")); string(b) != "from-container\n" {
					t.Errorf("the host sees %q", b)
				}
				if r := d.run("", "run", "--rm", "-v", "/workspace/sub:/data:ro", "busybox", "sh", "-c", "echo x > /data/ro"); r.code == 0 {
					t.Errorf("a :ro bind was written: %+v", r)
				}
				if r := d.run("", "run", "--rm", "--mount", "type=bind,src=/workspace/sub,dst=/data,readonly", "busybox", "touch", "/data/ro"); r.code == 0 {
					t.Errorf("a readonly --mount was written: %+v", r)
				}
				if _, err := os.Stat(filepath.Join(ws, "sub", "ro")); err == nil {
					t.Error("a read-only bind reached the host")
				}
				// A read-only run mount stays read-only whatever the container asks.
				if r := d.run("", "run", "--rm", "-v", "/ro:/data:rw", "busybox", "sh", "-c", "cat /data/hello && touch /data/ro"); r.code == 0 || r.stdout != "from the host\n" {
					t.Errorf("a read-only run mount bound rw: %+v", r)
				}
				if out := d.ok("run", "--rm", "-v", "/workspace/inlink:/data", "busybox", "cat", "/data/hello"); out != "from the host\n" {
					t.Errorf("a link that stays inside: %q", out)
				}
				// -v makes a missing source, as Docker does; inside the workspace only.
				d.ok("run", "--rm", "-v", "/workspace/made/here:/m", "busybox", "true")
				if st, err := os.Stat(filepath.Join(ws, "made", "here")); err != nil || !st.IsDir() {
					t.Errorf("-v did not make its missing source: %v", err)
				}
				for _, src := range []string{"/etc", "/", "/workspace/etclink", "/workspace/uplink", "/workspace/uplink/etc", "/tmp"} {
					r := d.run("", "run", "--rm", "-v", src+":/x", "busybox", "ls", "/x")
					if r.code != 125 || !strings.Contains(r.stderr, "moatc refuses to bind") || !strings.Contains(r.stderr, "/workspace") {
						t.Errorf("-v %s:/x: %+v", src, r)
					}
				}
				if r := d.run("", "run", "--rm", "--mount", "type=bind,src=/workspace/sub,dst=/x,bind-propagation=rshared", "busybox", "true"); r.code != 125 || !strings.Contains(r.stderr, "refuses") {
					t.Errorf("bind-propagation=rshared: %+v", r)
				}
				// --volumes-from takes the engine's own containers' mounts only.
				d.ok("create", "--name", "src", "-v", "/workspace/sub:/data:ro", "busybox", "true")
				if out := d.ok("run", "--rm", "--volumes-from", "src", "busybox", "cat", "/data/hello"); out != "from the host\n" {
					t.Errorf("--volumes-from: %q", out)
				}
				// inspect and ps show the mounts, a bind's source as the workload sees it.
				d.ok("create", "--name", "mounts", "-v", "/workspace/sub:/data:ro", "-v", "e2e-mounts:/vol", "busybox", "true")
				if out := d.ok("inspect", "-f", "{{range .Mounts}}{{.Type}} {{.Name}} {{.Source}} {{.Destination}} {{.RW}};{{end}}", "mounts"); !strings.Contains(out, "bind  /workspace/sub /data false;") ||
					!strings.Contains(out, "volume e2e-mounts ") || !strings.Contains(out, "/e2e-mounts/_data /vol true;") {
					t.Errorf("inspect's Mounts: %q", out)
				}
				if out := d.ok("ps", "-a", "--filter", "volume=e2e-mounts", "--format", "{{.Names}}"); out != "mounts\n" {
					t.Errorf("ps --filter volume=e2e-mounts: %q", out)
				}
				d.ok("rm", "mounts")
				d.ok("volume", "rm", "e2e-mounts")
				d.ok("rm", "src")
				if r := d.run("", "run", "--rm", "--volumes-from", "nosuch", "busybox", "true"); r.code != 125 {
					t.Errorf("--volumes-from of an unknown container: %+v", r)
				}
			})
			t.Run("socket", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "--name", "marker", "busybox", "sleep", "600")
				out := d.ok("run", "--rm", "-v", "/var/run/docker.sock:/var/run/docker.sock", "-v", "/workspace/bin:/opt/bin:ro",
					"busybox", "/opt/bin/docker", "ps", "--format", "{{.Names}}", "--filter", "name=marker")
				if out != "marker\n" {
					t.Errorf("the docker CLI inside sees %q, want the same engine's marker", out)
				}
				d.ok("rm", "-f", "marker")
				// Only the socket's own path: its directory is not the engine's to give.
				if r := d.run("", "run", "--rm", "-v", "/var/run:/x", "busybox", "true"); r.code != 125 || !strings.Contains(r.stderr, "refuses") {
					t.Errorf("-v /var/run: %+v", r)
				}
			})
			t.Run("refused", func(t *testing.T) {
				d.t = t
				for _, args := range [][]string{{"--privileged"}, {"--cap-add", "ALL"}, {"--cap-add", "SYS_ADMIN"},
					{"--security-opt", "no-new-privileges=false"}, {"--oom-score-adj", "-500"}, {"--tmpfs", "/t:dev"}} {
					r := d.run("", append(append([]string{"run", "--rm"}, args...), "busybox", "true")...)
					if r.code != 125 || !strings.Contains(r.stderr, "moatc refuses") {
						t.Errorf("run %v: %+v", args, r)
					}
				}
			})
			t.Run("cap-drop", func(t *testing.T) {
				d.t = t
				if out := d.ok("run", "--rm", "--cap-drop", "ALL", "busybox", "grep", "CapEff", "/proc/self/status"); !strings.Contains(out, "0000000000000000") {
					t.Errorf("--cap-drop ALL leaves %q", out)
				}
				if out := d.ok("run", "--rm", "--cap-drop", "ALL", "--cap-add", "CHOWN", "busybox", "grep", "CapEff", "/proc/self/status"); !strings.Contains(out, "0000000000000001") {
					t.Errorf("--cap-drop ALL --cap-add CHOWN leaves %q", out)
				}
				if r := d.run("", "run", "--rm", "--cap-drop", "CHOWN", "busybox", "chown", "1:1", "/tmp"); r.code == 0 {
					t.Errorf("chown worked without CAP_CHOWN: %+v", r)
				}
			})
			t.Run("events", func(t *testing.T) {
				d.t = t
				out := d.ok("events", "--since", strconv.FormatInt(since, 10), "--until", strconv.FormatInt(time.Now().Unix()+1, 10), "--filter", "type=volume", "--format", "{{.Action}} {{.Actor.ID}}")
				for _, want := range []string{"create shared", "mount shared", "destroy shared", "create auto"} {
					if !strings.Contains(out, want+"\n") {
						t.Errorf("volume events lack %q:\n%s", want, out)
					}
				}
			})
			if out := d.ok("ps", "-a", "-q"); out != "" {
				t.Errorf("containers left: %q", out)
			}
		})
	}
}

// volStartEngine is startEngine with extra flags: an ephemeral engine.
func volStartEngine(t *testing.T, rt, ns string, extra ...string) *engineProc {
	t.Helper()
	args := append([]string{"--namespace", ns, "--image", "busybox", "--ephemeral"}, sandboxArgs(rt)...)
	return launchEngine(t, filepath.Join(home, "engine-vol-"+rt+".sock"), append(args, extra...)...)
}
