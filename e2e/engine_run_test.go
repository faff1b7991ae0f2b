package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEngineRun: runs with docker:dind get a Docker Engine API socket served by their own
// supervisor, under both runtimes: the Docker CLI inside (moatc's own, mounted) reaches it at
// DOCKER_HOST, runs a container from an image given with --dind-image, a second dind run does
// not see the first's containers, and destroy (also after a kill -9 of the supervisor) leaves
// no namespace. docker:host in an untrusted moatc.yaml is refused with the trust hint.
func TestEngineRun(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - docker:dind\n"), 0o644)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			args := append(append([]string{"run"}, sandboxArgs(rt)...), "--dind-image", "busybox", ws, "--", "sh", "-c",
				`echo DH=$DOCKER_HOST TC=$TESTCONTAINERS_HOST_OVERRIDE SO=$TESTCONTAINERS_DOCKER_SOCKET_OVERRIDE; docker version && docker run --rm busybox echo hi-from-sibling`)
			dirsBefore := engineRunHostDirs()
			res := moatcRun(t, opts{}, args...)
			if res.code != 0 {
				t.Fatalf("exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
			}
			for _, want := range []string{"DH=unix:///var/run/docker.sock", "SO=/var/run/docker.sock", "Server: moatc", "hi-from-sibling"} {
				if !strings.Contains(res.stdout, want) {
					t.Errorf("output lacks %q:\n%s", want, res.stdout)
				}
			}
			if !regexp.MustCompile(`TC=10\.\d+\.\d+\.254 `).MatchString(res.stdout) {
				t.Errorf("TESTCONTAINERS_HOST_OVERRIDE is not the run subnet's .254:\n%s", res.stdout)
			}
			if leftover := engineRunNamespaces(t); len(leftover) > 0 {
				t.Errorf("dind namespaces left after the run ended: %v", leftover)
			}
			// The socket is any user's of the container (dependency images run unprivileged).
			asUser := moatcRun(t, opts{}, append(append([]string{"run", "-u", "1000:1000"}, sandboxArgs(rt)...), ws, "--", "sh", "-c", "id -u; docker ps -q; echo ok")...)
			if asUser.code != 0 || !strings.Contains(asUser.stdout, "1000\n") || !strings.Contains(asUser.stdout, "ok") {
				t.Errorf("docker as uid 1000 in a dind run: exit %d\n%s\n%s", asUser.code, asUser.stdout, asUser.stderr)
			}
			// Nor its cgroups or runc's state root on the host.
			for _, d := range engineRunHostDirs() {
				if !slices.Contains(dirsBefore, d) {
					t.Errorf("left on the host after the dind run ended: %s", d)
				}
			}

			// A detached dind run with a sibling running; a second run cannot see it.
			first := moatcRun(t, opts{}, append(append([]string{"run", "-d"}, sandboxArgs(rt)...), "--dind-image", "busybox", ws, "--", "sh", "-c",
				"docker run -d --name sib busybox sleep 1000 && sleep 1000")...)
			if first.code != 0 {
				t.Fatalf("detached run: exit %d\n%s", first.code, first.stderr)
			}
			id := strings.TrimSpace(first.stdout)
			ns := "moatc-dind-" + id
			deadline := time.Now().Add(60 * time.Second)
			for !engineRunHasContainer(t, ns) {
				if time.Now().After(deadline) {
					t.Fatalf("the first run's sibling never appeared in %s", ns)
				}
				time.Sleep(300 * time.Millisecond)
			}
			if st := moatcRun(t, opts{}, "status", "--json", id); !strings.Contains(st.stdout, `"engine_containers"`) || !strings.Contains(st.stdout, `"name": "sib"`) {
				t.Errorf("moatc status does not list the engine's container sib:\n%s", st.stdout)
			}
			second := moatcRun(t, opts{}, append(append([]string{"run"}, sandboxArgs(rt)...), ws, "--", "sh", "-c", "docker ps -a --format '{{.Names}}'; echo end")...)
			if second.code != 0 || strings.Contains(second.stdout, "sib") || !strings.Contains(second.stdout, "end") {
				t.Errorf("the second dind run saw the first's containers (or failed: exit %d):\n%s\n%s", second.code, second.stdout, second.stderr)
			}

			// kill -9 of the supervisor, then destroy: nothing of the namespace is left.
			if pid := engineRunSupervisor(t, id); pid > 0 {
				if p, err := os.FindProcess(pid); err == nil {
					p.Kill()
				}
			}
			if res := moatcRun(t, opts{}, "destroy", "--force", id); res.code != 0 {
				t.Fatalf("destroy: exit %d\n%s", res.code, res.stderr)
			}
			if res := moatcRun(t, opts{}, "clean"); res.code != 0 {
				t.Fatalf("clean: exit %d\n%s", res.code, res.stderr)
			}
			if slices.Contains(engineRunNamespaces(t), ns) {
				t.Errorf("namespace %s left after destroy and clean", ns)
			}

			// A foreground run's moatc killed with -9, then clean: no dind namespace left.
			fg := exec.Command(moatc, append(append([]string{"run"}, sandboxArgs(rt)...), "--dind-image", "busybox", ws, "--", "sh", "-c",
				"docker run -d busybox sleep 1000 && sleep 1000")...)
			if err := fg.Start(); err != nil {
				t.Fatal(err)
			}
			before := engineRunNamespaces(t)
			deadline = time.Now().Add(60 * time.Second)
			var fgNS string
			for fgNS == "" {
				for _, n := range engineRunNamespaces(t) {
					if !slices.Contains(before, n) || engineRunHasContainer(t, n) {
						fgNS = n
					}
				}
				if time.Now().After(deadline) {
					fg.Process.Kill()
					t.Fatal("the foreground run's sibling never appeared")
				}
				time.Sleep(300 * time.Millisecond)
			}
			// Killed once the sibling runs (a kill in the middle of its start is not covered).
			for !engineRunTaskRunning(fgNS) && time.Now().Before(deadline) {
				time.Sleep(300 * time.Millisecond)
			}
			fg.Process.Kill()
			fg.Wait()
			if res := moatcRun(t, opts{}, "clean"); res.code != 0 {
				t.Fatalf("clean: exit %d\n%s", res.code, res.stderr)
			}
			if left := engineRunNamespaces(t); len(left) > 0 {
				t.Errorf("dind namespaces left after kill -9 and clean: %v", left)
			}
		})
	}

	t.Run("host-untrusted", func(t *testing.T) {
		wsh := workspace(t)
		os.WriteFile(filepath.Join(wsh, "moatc.yaml"), []byte("dependencies:\n  - docker:host\n"), 0o644)
		res := moatcRun(t, opts{}, "run", wsh, "--", "true")
		if res.code == 0 || !strings.Contains(res.stderr, "moatc trust") || !strings.Contains(res.stderr, "docker:host") {
			t.Errorf("an untrusted docker:host was not refused with the trust hint: exit %d\n%s", res.code, res.stderr)
		}
	})
	// docker_images reads moatc's store (the person's images): an untrusted moatc.yaml may not
	// copy them into its engine; --dind-image, the person's flag, may.
	t.Run("images-untrusted", func(t *testing.T) {
		wsi := workspace(t)
		os.WriteFile(filepath.Join(wsi, "moatc.yaml"), []byte("dependencies:\n  - docker:dind\ndocker_images:\n  - busybox\n"), 0o644)
		res := moatcRun(t, opts{}, "run", "--no-sandbox", wsi, "--", "true")
		if res.code == 0 || !strings.Contains(res.stderr, "moatc trust") || !strings.Contains(res.stderr, "docker_images") {
			t.Errorf("an untrusted docker_images was not refused with the trust hint: exit %d\n%s", res.code, res.stderr)
		}
	})
}

// engineRunNamespaces lists containerd's dind namespaces.
func engineRunNamespaces(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "namespaces", "ls", "-q").Output()
	if err != nil {
		t.Fatalf("ctr namespaces ls: %v", err)
	}
	var dind []string
	for _, n := range strings.Fields(string(out)) {
		if strings.HasPrefix(n, "moatc-dind-") {
			dind = append(dind, n)
		}
	}
	return dind
}

// engineRunHasContainer reports whether namespace ns holds a container.
func engineRunHasContainer(t *testing.T, ns string) bool {
	out, _ := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "-n", ns, "containers", "ls", "-q").Output()
	return strings.TrimSpace(string(out)) != ""
}

// engineRunSupervisor is run id's supervisor pid, from its record.
func engineRunSupervisor(t *testing.T, id string) int {
	var r struct {
		Supervisor struct {
			Pid int `json:"pid"`
		} `json:"supervisor"`
	}
	b, err := os.ReadFile(filepath.Join(home, "runs", id, "metadata.json"))
	if err != nil {
		t.Fatalf("reading run %s's record: %v", id, err)
	}
	decodeJSON(t, string(b), &r)
	return r.Supervisor.Pid
}

// engineRunTaskRunning reports whether namespace ns has a running task.
func engineRunTaskRunning(ns string) bool {
	out, _ := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "-n", ns, "tasks", "ls").Output()
	return strings.Contains(string(out), "RUNNING")
}

// TestEngineRunHost: docker:host runs under both runtimes. An image loaded and tagged by one
// run is seen (and run) by a later run; two runs at once each see only their own containers;
// after a kill -9 of a detached run's supervisor, clean removes that run's containers from
// moatc-docker (its record ended under gVisor, gone under runc) and the images stay.
func TestEngineRunHost(t *testing.T) {
	requireStack(t)
	// No registry here: busybox comes as a tar saved by a dind run's engine.
	wsd := workspace(t)
	os.WriteFile(filepath.Join(wsd, "moatc.yaml"), []byte("dependencies:\n  - docker:dind\n"), 0o644)
	mustRun(t, "run", "--dind-image", "busybox", wsd, "--", "docker", "save", "-o", "/workspace/bb.tar", "busybox")
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - docker:host\n"), 0o644)
	if err := os.Rename(filepath.Join(wsd, "bb.tar"), filepath.Join(ws, "bb.tar")); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "trust", ws)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			run := func(flags []string, cmd ...string) result {
				return moatcRun(t, opts{}, append(append(append(append([]string{"run"}, flags...), sandboxArgs(rt)...), ws, "--"), cmd...)...)
			}
			tag := "e2e/kept:" + rt
			if res := run(nil, "sh", "-c", "docker load -i /workspace/bb.tar && docker tag busybox "+tag); res.code != 0 {
				t.Fatalf("load and tag: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
			}
			res := run(nil, "sh", "-c", "docker images --format '{{.Repository}}:{{.Tag}}' && docker run --rm "+tag+" echo kept-runs")
			if res.code != 0 || !strings.Contains(res.stdout, tag+"\n") || !strings.Contains(res.stdout, "kept-runs") {
				t.Fatalf("a later docker:host run does not see or run %s (exit %d):\n%s\n%s", tag, res.code, res.stdout, res.stderr)
			}

			// Two runs at once: a detached one with a sibling, and one that sees only its own.
			vol := "e2e-shared-" + rt
			first := run([]string{"-d"}, "sh", "-c", "docker run -d --name hostsib -v "+vol+":/data "+tag+" sleep 1000 && sleep 1000")
			if first.code != 0 {
				t.Fatalf("detached run: exit %d\n%s", first.code, first.stderr)
			}
			id := strings.TrimSpace(first.stdout)
			engineHostAwaitRunning(t, id, "hostsib")
			if st := moatcRun(t, opts{}, "status", "--json", id); !strings.Contains(st.stdout, `"name": "hostsib"`) {
				t.Errorf("moatc status does not list the engine's container hostsib:\n%s", st.stdout)
			}
			second := run(nil, "sh", "-c", "docker run --rm "+tag+" echo hi-second && docker ps -a --format 'ps:{{.Names}}'; docker volume prune -a -f; docker volume rm "+vol+" 2>&1; echo RM=$?; echo end")
			if second.code != 0 || !strings.Contains(second.stdout, "hi-second") || !strings.Contains(second.stdout, "end") {
				t.Errorf("the second docker:host run failed (exit %d):\n%s\n%s", second.code, second.stdout, second.stderr)
			}
			if strings.Contains(second.stdout, "hostsib") {
				t.Errorf("the second docker:host run saw the first's containers:\n%s", second.stdout)
			}
			// The volume the first run's container uses is in use for the second run too.
			// The first run's container outlived the second run's engine (which once removed
			// every container of the namespace without a record of its own).
			if res := moatcRun(t, opts{}, "status", "--json", id); !strings.Contains(res.stdout, `"name": "hostsib"`) || !strings.Contains(res.stdout, `"state": "running"`) {
				t.Errorf("the first docker:host run's container is gone or stopped after a second run:\n%s", res.stdout)
			}
			if !strings.Contains(second.stdout, "volume is in use") || !strings.Contains(second.stdout, "RM=1") {
				t.Errorf("the second docker:host run removed (or pruned) a volume the first's container uses:\n%s", second.stdout)
			}

			if res := moatcRun(t, opts{}, "destroy", "--force", id); res.code != 0 {
				t.Fatalf("destroy: exit %d\n%s", res.code, res.stderr)
			}
			if left := engineHostContainers(t, id); len(left) > 0 {
				t.Errorf("run %s's containers left in moatc-docker after destroy: %v", id, left)
			}
			if res := run(nil, "docker", "volume", "rm", vol); res.code != 0 {
				t.Errorf("docker volume rm %s once its user's run is gone: exit %d\n%s\n%s", vol, res.code, res.stdout, res.stderr)
			}

			// A foreground run's moatc killed with -9; its record ended (gVisor) or gone (runc).
			before, _ := os.ReadDir(filepath.Join(home, "runs"))
			fg := exec.Command(moatc, append(append([]string{"run"}, sandboxArgs(rt)...), ws, "--", "sh", "-c",
				"docker run -d --name fgsib "+tag+" sleep 1000 && sleep 1000")...)
			if err := fg.Start(); err != nil {
				t.Fatal(err)
			}
			fgID := ""
			for deadline := time.Now().Add(30 * time.Second); fgID == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
				after, _ := os.ReadDir(filepath.Join(home, "runs"))
				for _, e := range after {
					if e.IsDir() && !slices.ContainsFunc(before, func(b os.DirEntry) bool { return b.Name() == e.Name() }) {
						fgID = e.Name()
					}
				}
			}
			if fgID == "" {
				fg.Process.Kill()
				fg.Wait()
				t.Fatal("the foreground run's record never appeared")
			}
			engineHostAwaitRunning(t, fgID, "fgsib")
			fg.Process.Kill()
			fg.Wait()
			if rt == "runc" {
				if err := os.RemoveAll(filepath.Join(home, "runs", fgID)); err != nil {
					t.Fatal(err)
				}
			}
			cl := moatcRun(t, opts{}, "clean")
			if cl.code != 0 {
				t.Fatalf("clean: exit %d\n%s", cl.code, cl.stderr)
			}
			if rt == "runc" && !strings.Contains(cl.stdout, "removed container moatc-docker/") {
				t.Errorf("clean does not report the record-less run's container in moatc-docker:\n%s", cl.stdout)
			}
			if left := engineHostContainers(t, fgID); len(left) > 0 {
				t.Errorf("run %s's containers left in moatc-docker after kill -9 and clean: %v\n%s", fgID, left, cl.stdout)
			}
			res = run(nil, "docker", "images", "--format", "{{.Repository}}:{{.Tag}}")
			if res.code != 0 || !strings.Contains(res.stdout, tag+"\n") {
				t.Errorf("%s gone from moatc-docker after clean (exit %d):\n%s\n%s", tag, res.code, res.stdout, res.stderr)
			}
		})
	}
}

// engineHostContainers lists run id's containers in the docker:host namespace.
func engineHostContainers(t *testing.T, id string) []string {
	t.Helper()
	out, err := exec.Command(filepath.Join(prefix, "bin", "ctr"), "-a", filepath.Join(home, "containerd", "containerd.sock"), "-n", "moatc-docker",
		"containers", "ls", "-q", `labels."moatc.run-id"==`+id).Output()
	if err != nil {
		t.Fatalf("ctr containers ls: %v", err)
	}
	return strings.Fields(string(out))
}

// engineHostAwaitRunning waits (up to a minute) until moatc status lists run id's engine
// container name as running.
func engineHostAwaitRunning(t *testing.T, id, name string) {
	t.Helper()
	var r struct {
		EngineContainers []struct{ Name, State string } `json:"engine_containers"`
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		st := moatcRun(t, opts{}, "status", "--json", id)
		if st.code == 0 {
			decodeJSON(t, st.stdout, &r)
			for _, c := range r.EngineContainers {
				if c.Name == name && c.State == "running" {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s's engine container %s never ran:\n%s\n%s", id, name, st.stdout, st.stderr)
		}
	}
}

// TestEngineRunKilledMidStart: a dind run's supervisor killed with -9 while its engine is in
// the middle of starting a sibling (runsc's or runc's `create` under way: containerd may lose
// the task while its shim goes on making the sandbox), then `moatc clean` (a foreground run)
// or `moatc destroy --force` and clean (a detached one, which clean would otherwise adopt):
// no process names the run's namespace or the run, nothing is mounted in the namespace's task
// directory, no runsc state of it is left, and containerd has no such namespace.
func TestEngineRunKilledMidStart(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - docker:dind\n"), 0o644)
	// The image first: its build (slow when no other test made it yet) is not the window in
	// which a sibling's create is awaited.
	if r := moatcRun(t, opts{timeout: 10 * time.Minute}, "build", "-q", ws); r.code != 0 {
		t.Fatalf("building the dind image: exit %d\n%s", r.code, r.stderr)
	}
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			for _, detached := range []bool{false, true} {
				args := append(append([]string{"run"}, sandboxArgs(rt)...), "--dind-image", "busybox", ws, "--", "sh", "-c",
					"while :; do docker run -d busybox sleep 1000; done")
				var fg *exec.Cmd
				id := ""
				if detached {
					res := moatcRun(t, opts{}, append([]string{"run", "-d"}, args[1:]...)...)
					if res.code != 0 {
						t.Fatalf("run -d: exit %d\n%s", res.code, res.stderr)
					}
					id = strings.TrimSpace(res.stdout)
				} else {
					fg = exec.Command(moatc, args...)
					if err := fg.Start(); err != nil {
						t.Fatal(err)
					}
				}
				// Siblings start one after another: the kill lands while one's create is under way.
				deadline := time.Now().Add(90 * time.Second)
				ns := ""
				for ns == "" {
					if ns = engineRunCreating(id); ns == "" {
						if time.Now().After(deadline) {
							if fg != nil {
								fg.Process.Kill()
								fg.Wait()
							}
							t.Fatalf("no sibling create seen (detached %v)", detached)
						}
						time.Sleep(2 * time.Millisecond)
					}
				}
				id = strings.TrimPrefix(ns, "moatc-dind-")
				if detached {
					if p, err := os.FindProcess(engineRunSupervisor(t, id)); err == nil {
						p.Kill()
					}
				} else {
					fg.Process.Kill()
					fg.Wait()
				}
				// Let the orphaned shim finish what it was doing.
				time.Sleep(3 * time.Second)
				t.Logf("detached %v: after the kill, %d processes name %s", detached, len(engineRunProcs(engineRunNames(ns, id))), ns)
				if detached {
					if res := moatcRun(t, opts{}, "destroy", "--force", id); res.code != 0 {
						t.Fatalf("destroy: exit %d\n%s", res.code, res.stderr)
					}
				}
				if res := moatcRun(t, opts{}, "clean"); res.code != 0 {
					t.Fatalf("clean: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
				}
				if left := engineRunProcs(engineRunNames(ns, id)); len(left) > 0 {
					t.Errorf("detached %v: processes of %s left: %v", detached, ns, left)
				}
				taskDir := filepath.Join(home, "containerd", "state", "io.containerd.runtime.v2.task", ns)
				mi, _ := os.ReadFile("/proc/self/mountinfo")
				for _, l := range strings.Split(string(mi), "\n") {
					if strings.Contains(l, taskDir) || strings.Contains(l, ns) {
						t.Errorf("detached %v: mount left: %s", detached, l)
					}
				}
				if st, _ := filepath.Glob(filepath.Join("/run/moatc/runsc", "*", ns)); len(st) > 0 {
					t.Errorf("detached %v: runsc state left: %v", detached, st)
				}
				if cg, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", ns)); len(cg) > 0 {
					t.Errorf("detached %v: cgroups left: %v", detached, cg)
				}
				if slices.Contains(engineRunNamespaces(t), ns) {
					t.Errorf("detached %v: namespace %s left", detached, ns)
				}
				if t.Failed() {
					return
				}
			}
		})
	}
}

// engineRunCreating is the dind namespace (of run id; of any run when id is "") in which
// runsc or runc is creating a container of this test's containerd; "" when none is.
func engineRunCreating(id string) string {
	tasks := filepath.Join(home, "containerd", "state", "io.containerd.runtime.v2.task") + "/moatc-dind-" + id
	for _, p := range engineRunProcs(func(argv []string) bool {
		base := filepath.Base(argv[0])
		return (base == "runsc" || base == "runc") && slices.Contains(argv, "create")
	}) {
		if _, rest, ok := strings.Cut(p, tasks); ok {
			ns, _, _ := strings.Cut("moatc-dind-"+id+rest, "/")
			return ns
		}
	}
	return ""
}

// engineRunNames: argv names namespace ns or run id (its container, its logs).
func engineRunNames(ns, id string) func([]string) bool {
	return func(argv []string) bool {
		return slices.ContainsFunc(argv, func(a string) bool { return strings.Contains(a, ns) || strings.Contains(a, id) })
	}
}

// engineRunProcs lists the live processes (pid and command line) whose command line matches.
func engineRunProcs(match func([]string) bool) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == strconv.Itoa(os.Getpid()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if match(argv) {
			out = append(out, e.Name()+": "+strings.Join(argv, " "))
		}
	}
	return out
}

// engineRunHostDirs are the host directories of dind namespaces: cgroups and runc state roots.
func engineRunHostDirs() []string {
	var all []string
	for _, g := range []string{"/sys/fs/cgroup/*/moatc-dind-*", "/sys/fs/cgroup/moatc-dind-*", "/run/containerd/runc/moatc-dind-*"} {
		m, _ := filepath.Glob(g)
		all = append(all, m...)
	}
	return all
}

// TestEngineRunStrict: a strict dind run's engine pulls nothing, and its builds' RUN steps get
// no network (the build network's rules are not the run's strict ones). A permissive run's
// build, the control, reaches the same server.
func TestEngineRunStrict(t *testing.T) {
	requireStack(t)
	requireDockerCLI(t)
	ws := workspace(t)
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - docker:dind\n"), 0o644)
	os.MkdirAll(filepath.Join(ws, "ctx"), 0o755)
	os.WriteFile(filepath.Join(ws, "ctx", "Dockerfile"), []byte("FROM busybox\nRUN if wget -q -T 5 -O /dev/null http://deb.debian.org/debian/; then echo NET=REACHED; else echo NET=NONE; fi\n"), 0o644)
	for _, pol := range []string{"permissive", "strict"} {
		res := moatcRun(t, opts{}, "run", "--policy", pol, "--dind-image", "busybox", ws, "--", "sh", "-c",
			`docker pull example.com/x:1 2>&1; echo PULL=$?; docker build --no-cache /workspace/ctx 2>&1; echo BUILD=$?`)
		if res.code != 0 {
			t.Fatalf("%s: exit %d\n%s\n%s", pol, res.code, res.stdout, res.stderr)
		}
		want := []string{"BUILD=0", "NET=REACHED"}
		if pol == "strict" {
			want = []string{"PULL=1", "egress policy is strict", "BUILD=0", "NET=NONE"}
		}
		for _, w := range want {
			if !strings.Contains(res.stdout, w) {
				t.Errorf("%s run: output lacks %q:\n%s", pol, w, res.stdout)
			}
		}
	}
}
