package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

// The warm pool (issue 14). Every other test runs with MOATC_WARM_POOL=0; these turn the pool
// on in the shared home's config.yaml for their own duration.

// warm is the environment of a moatc command that sees the pool.
var warm = opts{env: []string{"MOATC_WARM_POOL="}}

type poolMember struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Class struct {
		Runtime string `json:"runtime"`
	} `json:"class"`
	Sandbox  string `json:"sandbox"`
	MemoryKB int64  `json:"memory_kb"`
	Health   string `json:"health"`
}

type warmRecord struct {
	runRecord
	Warm       bool   `json:"warm"`
	Sandbox    string `json:"sandbox"`
	Supervisor struct {
		Pid int `json:"pid"`
	} `json:"supervisor"`
}

// enablePool turns the pool on with config.yaml's pool: yaml (e.g. "{gvisor: 2, runc: 1}");
// the pool is drained and config.yaml removed when the test ends.
func enablePool(t *testing.T, yaml string) {
	t.Helper()
	cfg := filepath.Join(home, "config.yaml")
	if _, err := os.Stat(cfg); err == nil {
		t.Fatalf("%s exists already; these tests own it", cfg)
	}
	if err := os.WriteFile(cfg, []byte("pool: "+yaml+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r := moatcRun(t, warm, "pool", "drain"); r.code != 0 {
			t.Errorf("pool drain: %d %s", r.code, r.stderr)
		}
		os.Remove(cfg)
	})
}

func poolMembers(t *testing.T) []poolMember {
	t.Helper()
	var st struct {
		Members []poolMember `json:"members"`
	}
	r := moatcRun(t, warm, "pool", "status", "--json")
	if r.code != 0 {
		t.Fatalf("pool status: %d %s", r.code, r.stderr)
	}
	decodeJSON(t, r.stdout, &st)
	return st.Members
}

// readyOf lists the ready members of runtime rt.
func readyOf(t *testing.T, rt string) []poolMember {
	t.Helper()
	var out []poolMember
	for _, m := range poolMembers(t) {
		if m.Class.Runtime == rt && m.State == "ready" {
			out = append(out, m)
		}
	}
	return out
}

func fillPool(t *testing.T) {
	t.Helper()
	if r := moatcRun(t, warm, "pool", "fill", "-q"); r.code != 0 {
		t.Fatalf("pool fill: %d %s", r.code, r.stderr)
	}
}

func warmStatus(t *testing.T, ref string) warmRecord {
	t.Helper()
	var r warmRecord
	decodeJSON(t, mustRun(t, "status", "--json", ref).stdout, &r)
	return r
}

// normalize takes out of a run's output what must differ between two runs: their names and
// the third octet of their addresses (each run has its own /24), and link indexes.
func normalize(out string, names ...string) string {
	for _, n := range names {
		out = strings.ReplaceAll(out, n, "NAME")
	}
	out = regexp.MustCompile(`(\d+\.\d+)\.\d+\.(\d+)`).ReplaceAllString(out, "$1.X.$2")
	// gVisor's mount options name the gofer's descriptors, which differ with what the sandbox
	// opened before (a warm sandbox ran moatc-pause first).
	out = regexp.MustCompile(`fdno=\d+`).ReplaceAllString(out, "fdno=N")
	return regexp.MustCompile(`@if\d+`).ReplaceAllString(out, "@ifN")
}

// TestPoolWarmRunIsACold: a run started in a pre-booted sandbox (gVisor) or a pre-made network
// (runc) sees what a cold run of the same command sees, and ends the same way.
func TestPoolWarmRunIsACold(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 1, runc: 1}")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			os.WriteFile(filepath.Join(ws, "in-ws"), []byte("x"), 0o644)
			os.Chmod(ws, 0o755) // readable by uid 1000 too
			// run is one run, warm or cold, with its record.
			run := func(name string, cold bool, extra []string, cmd ...string) (result, warmRecord) {
				t.Helper()
				flags := []string{"-n", name}
				if cold {
					flags = append(flags, "--cold")
				} else {
					fillPool(t)
				}
				r := moatcRun(t, warm, busyboxRun(rt, append(flags, extra...), ws, cmd...)...)
				st := warmStatus(t, name)
				if st.Warm == cold {
					t.Fatalf("run %s: warm=%v, want %v (stderr %s)", name, st.Warm, !cold, r.stderr)
				}
				if !cold && rt == "gvisor" && !strings.HasPrefix(st.Sandbox, "moatc-pool-") {
					t.Errorf("warm gVisor run %s: sandbox %q", name, st.Sandbox)
				}
				return r, st
			}
			view := `id; echo host=$(hostname); cat /etc/hosts /etc/resolv.conf; ip addr | grep -E "inet |mtu"; ` +
				`mount | grep " /workspace "; ulimit -u; ulimit -n; nproc; head -1 /proc/meminfo; pwd; ls /workspace; echo env=$HOME`
			for _, user := range []string{"", "1000:1000"} {
				var extra []string
				if user != "" {
					extra = []string{"--user", user, "--memory", "256m"}
					if rt == "gvisor" {
						// A gVisor member is booted with its class's limits: another memory
						// limit is another class, which this pool does not keep.
						extra = []string{"--user", user}
					}
				}
				w, _ := run(fmt.Sprintf("pw-%s-w%d", rt, len(user)), false, extra, "sh", "-c", view)
				c, _ := run(fmt.Sprintf("pw-%s-c%d", rt, len(user)), true, extra, "sh", "-c", view)
				wn := normalize(w.stdout, fmt.Sprintf("pw-%s-w%d", rt, len(user)))
				cn := normalize(c.stdout, fmt.Sprintf("pw-%s-c%d", rt, len(user)))
				if w.code != 0 || c.code != 0 || wn != cn || !strings.Contains(wn, "host=NAME") || !strings.Contains(wn, "in-ws") {
					t.Errorf("user %q: warm (exit %d) and cold (exit %d) differ:\n--- warm\n%s\n--- cold\n%s\nwarm stderr: %s", user, w.code, c.code, wn, cn, w.stderr)
				}
			}
			// A strict policy: the same rules, proxy settings and (no) name servers. A direct
			// connection out is refused, warm as cold.
			strict := `cat /etc/resolv.conf; env | grep -i _proxy= | sort; ` +
				`if timeout 5 wget -O /tmp/o http://1.1.1.1/ >/dev/null 2>&1; then echo reached; else echo blocked; fi`
			ws1, _ := run(fmt.Sprintf("pw-%s-sw", rt), false, []string{"--policy", "strict"}, "sh", "-c", strict)
			cs1, _ := run(fmt.Sprintf("pw-%s-sc", rt), true, []string{"--policy", "strict"}, "sh", "-c", strict)
			// Each run's proxy has its own port and password.
			proxyURL := regexp.MustCompile(`//moatc:[^@]*@([0-9.X]+):\d+`)
			same := func(out string) string { return proxyURL.ReplaceAllString(normalize(out), "//moatc:TOKEN@$1:PORT") }
			if wn, cn := same(ws1.stdout), same(cs1.stdout); ws1.code != 0 || wn != cn ||
				!strings.Contains(wn, "HTTPS_PROXY=") || !strings.Contains(wn, "blocked") {
				t.Errorf("strict: warm (exit %d) and cold differ:\n--- warm\n%s\n--- cold\n%s\nwarm stderr %s", ws1.code, wn, cn, ws1.stderr)
			}
			for i, c := range []struct {
				cmd  string
				want int
			}{{"exit 0", 0}, {"exit 1", 1}, {"sleep 100 & kill -9 $!; wait $!", 137}} {
				w, _ := run(fmt.Sprintf("pw-%s-x%dw", rt, i), false, nil, "sh", "-c", c.cmd)
				k, _ := run(fmt.Sprintf("pw-%s-x%dc", rt, i), true, nil, "sh", "-c", c.cmd)
				if w.code != c.want || k.code != c.want {
					t.Errorf("%q: warm exit %d, cold exit %d, want %d", c.cmd, w.code, k.code, c.want)
				}
			}
			// SIGTERM to moatc reaches the workload, warm as cold.
			for _, cold := range []bool{false, true} {
				name := fmt.Sprintf("pw-%s-sig%v", rt, cold)
				flags := []string{"-n", name}
				if cold {
					flags = append(flags, "--cold")
				} else {
					fillPool(t)
				}
				fg := exec.Command(moatc, busyboxRun(rt, flags, ws, "sh", "-c", "trap 'echo got-term; exit 42' TERM; echo ready; while true; do sleep 0.1; done")...)
				fg.Env = append(os.Environ(), warm.env...)
				if err := fg.Start(); err != nil {
					t.Fatal(err)
				}
				waitLog(t, name, "ready")
				fg.Process.Signal(syscall.SIGTERM)
				if err := fg.Wait(); exitCode(err) != 42 {
					t.Errorf("cold=%v: SIGTERM: moatc exited %v, want 42", cold, err)
				}
				if st := warmStatus(t, name); st.Warm == cold {
					t.Errorf("run %s: warm=%v", name, st.Warm)
				}
			}
			// A TTY, warm as cold.
			var ttys []string
			for _, cold := range []bool{false, true} {
				flags := []string{"-t"}
				if cold {
					flags = append(flags, "--cold")
				} else {
					fillPool(t)
				}
				cmd := exec.Command(moatc, busyboxRun(rt, flags, ws, "sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; tty; stty size; exit 5")...)
				cmd.Env = append(os.Environ(), warm.env...)
				f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
				if err != nil {
					t.Fatal(err)
				}
				out, _ := io.ReadAll(f) // EIO once moatc has exited
				f.Close()
				if err := cmd.Wait(); exitCode(err) != 5 {
					t.Errorf("cold=%v: TTY run exited %v, want 5; output %q", cold, err, out)
				}
				ttys = append(ttys, strings.ReplaceAll(string(out), "\r", ""))
			}
			if ttys[0] != ttys[1] || !strings.Contains(ttys[0], "is-a-tty") || !strings.Contains(ttys[0], "33 101") {
				t.Errorf("TTY: warm %q, cold %q", ttys[0], ttys[1])
			}
		})
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

// TestPoolNothingPassesBetweenRuns: a warm run leaves a file and a process behind in its
// sandbox; the next warm run sees neither, and the first one's sandbox and network are gone.
func TestPoolNothingPassesBetweenRuns(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 2, runc: 2}")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			fillPool(t)
			a := moatcRun(t, warm, busyboxRun(rt, []string{"-n", "pn-a-" + rt}, ws, "sh", "-c",
				"echo secret > /tmp/marker; echo secret > /dev/shm/marker; (sleep 1000 &) ; echo left")...)
			if a.code != 0 || !strings.Contains(a.stdout, "left") {
				t.Fatalf("first run: %d %s %s", a.code, a.stdout, a.stderr)
			}
			first := warmStatus(t, "pn-a-"+rt)
			b := moatcRun(t, warm, busyboxRun(rt, []string{"-n", "pn-b-" + rt}, ws, "sh", "-c",
				"ls /tmp/marker /dev/shm/marker 2>&1; ps -o comm | grep -cx sleep; ps -o comm | grep -c pause; echo done")...)
			second := warmStatus(t, "pn-b-"+rt)
			if !first.Warm || !second.Warm {
				t.Fatalf("warm: first %v, second %v", first.Warm, second.Warm)
			}
			if first.ID == second.ID || (rt == "gvisor" && first.Sandbox == second.Sandbox) {
				t.Fatalf("the two runs shared a member: %s/%s %s/%s", first.ID, second.ID, first.Sandbox, second.Sandbox)
			}
			if strings.Contains(b.stdout, "secret") || !strings.Contains(b.stdout, "No such file") || !strings.Contains(b.stdout, "\n0\n0\ndone") {
				t.Errorf("the second run saw the first's leftovers: %q", b.stdout)
			}
			// The first run's sandbox and network go right after it (a detached release).
			waitMemberGone(t, first.ID, first.Sandbox)
		})
	}
}

// waitMemberGone waits for run id's pool sandbox (if any), netns and bridge to be gone.
func waitMemberGone(t *testing.T, id, sandbox string) {
	t.Helper()
	var left string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		left = ""
		if sandbox != "" && strings.Contains(ctr(t, "containers", "list", "-q"), sandbox) {
			left += " container " + sandbox
		}
		if sandbox != "" && len(leakProcsOf(sandbox)) > 0 {
			left += " processes of " + sandbox
		}
		if _, err := os.Stat("/run/netns/moatc-" + id); err == nil {
			left += " netns"
		}
		if out, _ := exec.Command("ip", "-o", "link").Output(); strings.Contains(string(out), "mc-"+id) {
			left += " bridge"
		}
		if out, _ := exec.Command("iptables-save").Output(); strings.Contains(string(out), "moatc run "+id+":") {
			left += " rules"
		}
		if left == "" {
			return
		}
	}
	t.Errorf("run %s left:%s", id, left)
}

// TestPoolRefillsAndReplacesBroken: the pool is made whole again after a run takes a member;
// members whose sandbox died or whose network was removed are never handed to a run, and are
// replaced.
func TestPoolRefillsAndReplacesBroken(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 2, runc: 1}")
	ws := workspace(t)
	fillPool(t)
	before := readyOf(t, "gvisor")
	if len(before) != 2 || len(readyOf(t, "runc")) != 1 {
		t.Fatalf("after fill: %+v", poolMembers(t))
	}
	for _, m := range before {
		if m.MemoryKB <= 0 {
			t.Errorf("member %s: idle memory not measured", m.ID)
		}
	}
	var sys struct {
		Pool struct {
			Want     int            `json:"want"`
			States   map[string]int `json:"states"`
			MemoryKB int64          `json:"memory_kb"`
		} `json:"pool"`
	}
	decodeJSON(t, moatcRun(t, warm, "system", "status", "--json").stdout, &sys)
	if sys.Pool.Want != 3 || sys.Pool.States["ready"] != 3 || sys.Pool.MemoryKB != before[0].MemoryKB+before[1].MemoryKB {
		t.Errorf("system status: %+v", sys.Pool)
	}
	for _, m := range before {
		labels := ctr(t, "containers", "info", m.Sandbox)
		if !strings.Contains(labels, `"moatc.run-id": "`+m.ID+`"`) || !strings.Contains(labels, `"moatc.role": "pool"`) {
			t.Errorf("sandbox %s lacks moatc's labels", m.Sandbox)
		}
	}
	r := moatcRun(t, warm, busyboxRun("gvisor", []string{"-n", "pr-taken"}, ws, "true")...)
	taken := warmStatus(t, "pr-taken")
	if r.code != 0 || !taken.Warm {
		t.Fatalf("warm run: %d warm=%v %s", r.code, taken.Warm, r.stderr)
	}
	// Refilled in the background, with a new member.
	var now []poolMember
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if now = readyOf(t, "gvisor"); len(now) == 2 {
			break
		}
	}
	if len(now) != 2 || now[0].ID == taken.ID || now[1].ID == taken.ID {
		t.Fatalf("the pool was not refilled: %+v (taken %s)", now, taken.ID)
	}

	// Both sandboxes killed from the host: the next run finds them broken, starts cold, and
	// says why.
	killed := map[string]bool{}
	for _, m := range now {
		for _, row := range ctrRows(t, "tasks", "list") {
			if f := strings.Fields(row); len(f) >= 2 && f[0] == m.Sandbox {
				pid, _ := strconv.Atoi(f[1])
				syscall.Kill(pid, syscall.SIGKILL)
				killed[m.ID] = true
			}
		}
	}
	if len(killed) != 2 {
		t.Fatalf("found %d of the 2 sandboxes' tasks", len(killed))
	}
	time.Sleep(500 * time.Millisecond)
	r = moatcRun(t, warm, busyboxRun("gvisor", []string{"-n", "pr-after-kill"}, ws, "echo", "fine")...)
	st := warmStatus(t, "pr-after-kill")
	if r.code != 0 || r.stdout != "fine\n" || st.Warm || killed[st.ID] || !strings.Contains(r.stderr, "was broken") {
		t.Errorf("run after the sandboxes died: exit %d %q warm=%v id=%s stderr %q", r.code, r.stdout, st.Warm, st.ID, r.stderr)
	}
	// runc: the member's network namespace removed by hand.
	rm := readyOf(t, "runc")
	if len(rm) != 1 {
		t.Fatalf("runc members: %+v", poolMembers(t))
	}
	if out, err := exec.Command("ip", "netns", "delete", "moatc-"+rm[0].ID).CombinedOutput(); err != nil {
		t.Fatalf("ip netns delete: %v %s", err, out)
	}
	r = moatcRun(t, warm, busyboxRun("runc", []string{"-n", "pr-after-netns"}, ws, "echo", "fine")...)
	st = warmStatus(t, "pr-after-netns")
	if r.code != 0 || st.Warm || st.ID == rm[0].ID || !strings.Contains(r.stderr, "was broken") {
		t.Errorf("runc run after its member's netns went: exit %d warm=%v id=%s stderr %q", r.code, st.Warm, st.ID, r.stderr)
	}
	fillPool(t)
	if g, rc := readyOf(t, "gvisor"), readyOf(t, "runc"); len(g) != 2 || len(rc) != 1 || killed[g[0].ID] || killed[g[1].ID] || rc[0].ID == rm[0].ID {
		t.Errorf("after fill: %+v", poolMembers(t))
	}
	for id := range killed {
		waitMemberGone(t, id, "moatc-pool-"+id)
	}
	waitMemberGone(t, rm[0].ID, "")
}

// TestPoolCleanAfterKill9: a fill killed half-way and a warm run whose supervisor was killed
// leave nothing that `moatc clean` does not remove: no task, container, netns, bridge, rule.
func TestPoolCleanAfterKill9(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 2, runc: 1}")
	ws := workspace(t)
	vethsBefore := veths(t)
	fillPool(t)
	ids := map[string]bool{}
	for _, m := range poolMembers(t) {
		ids[m.ID] = true
	}
	// A warm run, its moatc killed.
	fg := exec.Command(moatc, busyboxRun("gvisor", []string{"-n", "pk-run"}, ws, "sh", "-c", "echo ready; sleep 1000")...)
	fg.Env = append(os.Environ(), warm.env...)
	if err := fg.Start(); err != nil {
		t.Fatal(err)
	}
	waitLog(t, "pk-run", "ready")
	st := warmStatus(t, "pk-run")
	if !st.Warm {
		t.Fatalf("the run did not start warm")
	}
	ids[st.ID] = true
	fg.Process.Kill()
	fg.Wait()
	// The refill it started, and a fill of our own, killed while they boot sandboxes.
	moatcRun(t, warm, "pool", "drain")
	fill := exec.Command(moatc, "pool", "fill")
	fill.Env = append(os.Environ(), warm.env...)
	if err := fill.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	fill.Process.Kill()
	fill.Wait()
	for _, killer := range leakProcsOf("\x00pool\x00fill") {
		syscall.Kill(killer, syscall.SIGKILL)
	}
	ents, _ := os.ReadDir(filepath.Join(home, "pool", "members"))
	for _, e := range ents {
		ids[strings.TrimSuffix(e.Name(), ".json")] = true
	}
	if len(ents) == 0 {
		t.Log("the killed fill had recorded no member yet")
	}
	// Any command reconciles first: members whose fill was killed go then.
	mustRun(t, "list")
	for _, m := range poolMembers(t) {
		if m.State != "ready" {
			t.Errorf("member %s is left %s after a command reconciled", m.ID, m.State)
		}
	}
	if r := moatcRun(t, warm, "clean"); r.code != 0 {
		t.Fatalf("clean: %d %s", r.code, r.stderr)
	}
	for id := range ids {
		waitMemberGone(t, id, "moatc-pool-"+id)
		if strings.Contains(ctr(t, "containers", "list", "-q"), "moatc-"+id) {
			t.Errorf("container of %s left", id)
		}
	}
	if rows := ctrRows(t, "tasks", "list"); len(rows) > 0 {
		for _, row := range rows {
			if strings.HasPrefix(row, "moatc-pool-") {
				t.Errorf("task left: %s", row)
			}
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(home, "pool", "members")); len(ents) != 0 {
		t.Errorf("%d member records left", len(ents))
	}
	for v := range veths(t) {
		if !vethsBefore[v] {
			t.Errorf("veth %s left", v)
		}
	}
}

// veths lists the host's veth interfaces.
func veths(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show", "type", "veth").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	m := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			m[strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]] = true
		}
	}
	return m
}

// TestPoolConfigErrors: a bad pool: in config.yaml is refused with its line and what to write.
func TestPoolConfigErrors(t *testing.T) {
	requireStack(t)
	for _, c := range []struct{ yaml, want string }{
		{"pool:\n  gvisor: many\n", `config.yaml:2: pool.gvisor: "many" is not a pool size`},
		{"pool:\n  kata: 1\n", "config.yaml:2: pool.kata: unknown key (known: gvisor, runc)"},
		{"pool:\n  gvisor: {memory: 1g}\n", "config.yaml:2: pool.gvisor: needs a size"},
	} {
		h := filepath.Join(t.TempDir(), "home")
		os.MkdirAll(h, 0o700)
		os.WriteFile(filepath.Join(h, "config.yaml"), []byte(c.yaml), 0o644)
		r := moatcRun(t, opts{env: []string{"MOATC_HOME=" + h}}, "pool", "status")
		if r.code == 0 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%q: exit %d, stderr %q, want %q", c.yaml, r.code, r.stderr, c.want)
		}
	}
	var st struct {
		Enabled bool `json:"enabled"`
	}
	decodeJSON(t, moatcRun(t, opts{}, "pool", "status", "--json").stdout, &st)
	if st.Enabled {
		t.Error("MOATC_WARM_POOL=0 left the pool on")
	}
}

// TestPoolWarmOOM: a gVisor member is booted with its class's memory limit; a run of that limit
// takes it, and a run out of memory ends 137 warm as cold (the whole sandbox is killed; its
// second container alone would say 128).
func TestPoolWarmOOM(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: {size: 1, memory: 128m}, runc: 0}")
	ws := workspace(t)
	hog := `x=$(head -c 300m /dev/zero | tr '\0' a); echo survived ${#x}`
	for _, cold := range []bool{false, true} {
		name := fmt.Sprintf("po-%v", cold)
		flags := []string{"-n", name, "--memory", "128m"}
		if cold {
			flags = append(flags, "--cold")
		} else {
			fillPool(t)
		}
		r := moatcRun(t, warm, busyboxRun("gvisor", flags, ws, "sh", "-c", hog)...)
		st := warmStatus(t, name)
		if r.code != 137 || st.Warm == cold || strings.Contains(r.stdout, "survived") {
			t.Errorf("cold=%v: exit %d warm=%v stdout %q stderr %q, want 137", cold, r.code, st.Warm, r.stdout, r.stderr)
		}
	}
	// Another memory limit is another class: cold, and not an error.
	r := moatcRun(t, warm, busyboxRun("gvisor", []string{"-n", "po-other", "--memory", "256m"}, ws, "true")...)
	if st := warmStatus(t, "po-other"); r.code != 0 || st.Warm {
		t.Errorf("a run of another limit: exit %d warm=%v", r.code, st.Warm)
	}
}

// TestPoolCannotBeFilled: a pool that cannot be filled (here: no address left, a network pool
// of one /24) leaves runs starting cold with a warning; a cold run that needs the address an
// idle member holds gets it.
func TestPoolCannotBeFilled(t *testing.T) {
	requireStack(t)
	cfg := filepath.Join(home, "config.yaml")
	if err := os.WriteFile(cfg, []byte("network_pool: 10.214.0.0/24\npool:\n  gvisor: 2\n  runc: 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		moatcRun(t, warm, "pool", "drain")
		os.Remove(cfg)
	})
	ws := workspace(t)
	r := moatcRun(t, warm, "pool", "fill")
	if r.code == 0 || !strings.Contains(r.stderr, "is full") || !strings.Contains(r.stderr, "runs start cold") {
		t.Fatalf("fill of a pool with one address: exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(readyOf(t, "gvisor")); n != 1 {
		t.Fatalf("%d members made, want the 1 an address was left for", n)
	}
	// A runc run (the pool keeps none) needs the address the member holds: it gets it.
	r = moatcRun(t, warm, busyboxRun("runc", []string{"-n", "pf-runc"}, ws, "echo", "ran")...)
	if r.code != 0 || r.stdout != "ran\n" || !strings.Contains(r.stderr, "a warm pool member was removed to make room") {
		t.Fatalf("runc run with the address held by the pool: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	// A gVisor run finds no member, and is told why, and starts cold.
	r = moatcRun(t, warm, busyboxRun("gvisor", []string{"-n", "pf-gvisor"}, ws, "echo", "ran")...)
	st := warmStatus(t, "pf-gvisor")
	if r.code != 0 || r.stdout != "ran\n" || st.Warm || !strings.Contains(r.stderr, "the warm pool could not be filled") {
		t.Errorf("gVisor run with an unfillable pool: exit %d %q warm=%v %q", r.code, r.stdout, st.Warm, r.stderr)
	}
}

// TestPoolRestart: a warm run restarted at once starts again cold under the same id; the
// release of its warm sandbox and network, which runs detached when the first task ends, does
// not take the new network or container with it.
func TestPoolRestart(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 1, runc: 0}")
	ws := workspace(t)
	fillPool(t)
	if r := moatcRun(t, warm, busyboxRun("gvisor", []string{"-d", "-n", "prs"}, ws, "sh", "-c", "echo up; sleep 1000")...); r.code != 0 {
		t.Fatalf("run -d: %d %s", r.code, r.stderr)
	}
	first := warmStatus(t, "prs")
	if !first.Warm {
		t.Fatal("the run did not start warm")
	}
	if r := moatcRun(t, warm, "restart", "-t", "0", "prs"); r.code != 0 {
		t.Fatalf("restart: %d %s", r.code, r.stderr)
	}
	time.Sleep(2 * time.Second) // the release of the first task has run by now
	again := warmStatus(t, "prs")
	if again.ID != first.ID || again.Warm || again.State != "running" {
		t.Fatalf("after restart: id %s warm=%v state %s (%s)", again.ID, again.Warm, again.State, again.Error)
	}
	out := moatcRun(t, warm, "exec", "prs", "--", "ip", "addr")
	if out.code != 0 || !strings.Contains(out.stdout, "inet "+again.IP+"/24") {
		t.Errorf("the restarted run's network: exit %d %q (ip %s)", out.code, out.stdout, again.IP)
	}
	if strings.Contains(ctr(t, "containers", "list", "-q"), first.Sandbox) {
		t.Errorf("the first task's sandbox %s is left", first.Sandbox)
	}
	mustRun(t, "destroy", "--force", "prs")
	waitMemberGone(t, first.ID, first.Sandbox)
}

// TestPoolWarmPublishedPort: a warm run's published port (bound when the run takes its
// member's network) answers from the host, as a cold run's does.
func TestPoolWarmPublishedPort(t *testing.T) {
	requireStack(t)
	enablePool(t, "{gvisor: 1, runc: 1}")
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			port := freePort(t)
			name := "pp-" + rt
			fillPool(t)
			r := moatcRun(t, warm, busyboxRun(rt, []string{"-d", "-n", name, "-p", fmt.Sprintf("%d:8080", port)}, ws, "sh", "-c",
				"mkdir -p /tmp/www && echo warm-"+rt+" > /tmp/www/index.html && echo ready && httpd -f -p 8080 -h /tmp/www")...)
			if r.code != 0 {
				t.Fatalf("run -d -p: %d %s", r.code, r.stderr)
			}
			defer mustRun(t, "destroy", "--force", name)
			if st := warmStatus(t, name); !st.Warm {
				t.Fatal("the run did not start warm")
			}
			waitLog(t, name, "ready")
			var body string
			for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && body == ""; time.Sleep(100 * time.Millisecond) {
				if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port)); err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					body = string(b)
				}
			}
			if body != "warm-"+rt+"\n" {
				t.Errorf("the published port answered %q", body)
			}
		})
	}
}
