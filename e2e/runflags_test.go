package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunflagsContainer: -w, --env-file, -e with and without a host value, --read-only (the
// workspace stays writable), --tmpfs and --hostname, on both runtimes.
func TestRunflagsContainer(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			os.Mkdir(filepath.Join(ws, "sub"), 0o755)
			ef := filepath.Join(ws, "vars.env")
			os.WriteFile(ef, []byte("# comment\n\nFROMFILE=file value\nFROMHOST\nNOTONHOST\n"), 0o644)
			script := `pwd; hostname; echo "F=$FROMFILE H=$FROMHOST N=${NOTONHOST-unset} S=$SETVAR U=${UNSETVAR-unset} L=$LIT"
touch /rootfile 2>/dev/null && echo root-writable || echo root-ro
touch /workspace/ok && echo ws-writable
touch /scratch/x && echo tmpfs-writable
grep ' /scratch ' /proc/mounts | grep -q noexec && echo tmpfs-noexec`
			args := busyboxRun(rt, []string{"-n", "flags-" + rt, "-w", "/workspace/sub", "--env-file", ef, "-e", "SETVAR", "-e", "UNSETVAR",
				"-e", "LIT=bar", "--read-only", "--tmpfs", "/scratch:size=8m", "--hostname", "hn-" + rt}, ws, "sh", "-c", script)
			env := []string{"FROMHOST=from host", "SETVAR=set on host"}
			os.Unsetenv("UNSETVAR")
			os.Unsetenv("NOTONHOST")
			r := moatcRun(t, opts{env: env}, args...)
			if r.code != 0 {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			want := "/workspace/sub\nhn-" + rt + "\nF=file value H=from host N=unset S=set on host U=unset L=bar\nroot-ro\nws-writable\ntmpfs-writable\n"
			if rt == "runc" {
				want += "tmpfs-noexec\n" // gVisor's /proc/mounts does not list noexec
			}
			if !strings.HasPrefix(r.stdout, want) {
				t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
			}
			if _, err := os.Stat(filepath.Join(ws, "ok")); err != nil {
				t.Errorf("the workspace write did not reach the host: %v", err)
			}
		})
	}
}

// TestRunflagsRemoveInitWorkspaceRO: --rm in the foreground removes the record at the end;
// --init puts tini at PID 1; --workspace-ro keeps the workspace from being written.
func TestRunflagsRemoveInitWorkspaceRO(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "rmfg-" + rt
			args := busyboxRun(rt, []string{"-n", name, "--rm", "--init", "--workspace-ro"}, ws, "sh", "-c",
				`touch /workspace/x 2>/dev/null && echo ws-rw || echo ws-ro; tr '\0' ' ' </proc/1/cmdline; echo; exit 3`)
			r := moatcRun(t, opts{}, args...)
			if r.code != 3 {
				t.Fatalf("exit %d, want the workload's 3\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
			}
			if !strings.HasPrefix(r.stdout, "ws-ro\n/sbin/moatc-init -- sh -c") {
				t.Errorf("stdout %q: want ws-ro, then tini as PID 1", r.stdout)
			}
			if _, err := os.Stat(filepath.Join(ws, "x")); err == nil {
				t.Errorf("the workload wrote a read-only workspace")
			}
			if st := moatcRun(t, opts{}, "status", name); st.code == 0 {
				t.Errorf("--rm run %s still has a record:\n%s", name, st.stdout)
			}
		})
	}
}

// TestRunflagsDetachedRemoveLabelsStopTimeout: -d --rm (the record goes when the detached
// run ends), --label on the container beside moatc's own, and --stop-timeout as the grace of
// a stop without -t.
func TestRunflagsDetachedRemoveLabelsStopTimeout(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "rmd-" + rt
			// The workload ignores SIGTERM: only the kill after the grace ends it.
			args := busyboxRun(rt, []string{"-d", "--rm", "-n", name, "--label", "team=blue", "--stop-timeout", "1"}, ws,
				"sh", "-c", `trap "" TERM; sleep 100`)
			id := strings.TrimSpace(mustRun(t, args...).stdout)
			var rec struct {
				Spec struct {
					Labels      map[string]string `json:"labels"`
					StopTimeout *int              `json:"stop_timeout"`
				} `json:"spec"`
				ContainerID string `json:"container_id"`
			}
			out := mustRun(t, "status", "--json", name).stdout
			if err := json.Unmarshal([]byte(out), &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Spec.Labels["team"] != "blue" || rec.Spec.StopTimeout == nil || *rec.Spec.StopTimeout != 1 {
				t.Errorf("record's spec: %s", out)
			}
			info := ctr(t, "containers", "info", rec.ContainerID)
			if !strings.Contains(info, `"team": "blue"`) || !strings.Contains(info, `"moatc.run-id": "`+id+`"`) {
				t.Errorf("container labels lack team=blue or moatc.run-id=%s:\n%s", id, info)
			}
			start := time.Now()
			st := moatcRun(t, opts{}, "stop", name)
			took := time.Since(start)
			if st.code != 0 {
				t.Fatalf("stop: exit %d: %s", st.code, st.stderr)
			}
			if took < time.Second || took > 8*time.Second {
				t.Errorf("stop without -t took %v; --stop-timeout 1 should have killed it after 1s (not 10)", took)
			}
			deadline := time.Now().Add(15 * time.Second)
			for moatcRun(t, opts{}, "status", id).code == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the record of detached --rm run %s is still there after it ended", id)
				}
				time.Sleep(200 * time.Millisecond)
			}
			if strings.Contains(ctr(t, "containers", "list", "-q"), rec.ContainerID) {
				t.Errorf("container %s left behind", rec.ContainerID)
			}
		})
	}
}

// TestRunflagsInitSignals: with --init, SIGINT to the foreground moatc ends `sleep 100` at
// once (tini passes it on). Without, sleep is PID 1: under runc the kernel ignores a signal
// PID 1 has no handler for, so the run goes on; gVisor delivers it anyway and sleep ends.
func TestRunflagsInitSignals(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		for _, init := range []bool{true, false} {
			label := map[bool]string{true: "init", false: "noinit"}[init]
			t.Run(rt+"/"+label, func(t *testing.T) {
				ws := workspace(t)
				name := "sig-" + label + "-" + rt
				flags := []string{"-n", name}
				if init {
					flags = append(flags, "--init")
				}
				cmd := exec.Command(moatc, busyboxRun(rt, flags, ws, "sleep", "100")...)
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				done := make(chan error, 1)
				go func() { done <- cmd.Wait() }()
				t.Cleanup(func() {
					cmd.Process.Kill()
					moatcRun(t, opts{}, "destroy", "--force", name)
				})
				waitRunning(t, name)
				cmd.Process.Signal(syscall.SIGINT)
				select {
				case <-done:
					if !init && rt == "runc" {
						t.Fatalf("without --init, sleep as PID 1 ended on SIGINT under runc (exit %d)", cmd.ProcessState.ExitCode())
					}
					if code := cmd.ProcessState.ExitCode(); code != 130 {
						t.Errorf("exit %d, want 130 (ended by SIGINT)", code)
					}
				case <-time.After(4 * time.Second):
					if init || rt == "gvisor" {
						t.Fatalf("SIGINT did not end the run within 4s")
					}
					mustRun(t, "stop", "-t", "1", name)
					select {
					case <-done:
					case <-time.After(20 * time.Second):
						t.Fatalf("moatc did not return after stop")
					}
				}
			})
		}
	}
}

func waitRunning(t *testing.T, name string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r := moatcRun(t, opts{}, "status", "--json", name)
		var rec runRecord
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &rec) == nil && rec.State == "running" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s not running after 60s: %s %s", name, r.stdout, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestRunflagsInputChecks: bad flags are usage errors (exit 2) before anything is made; a
// workspace that is the home directory is warned about; --image beats base_image.
func TestRunflagsInputChecks(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	bad := filepath.Join(ws, "bad.env")
	os.WriteFile(bad, []byte("A=1\nBAD KEY=2\n"), 0o644)
	for _, c := range []struct {
		flags []string
		msg   string
	}{
		{[]string{"--env-file", filepath.Join(ws, "missing.env")}, "missing.env"},
		{[]string{"--env-file", bad}, bad + ":2"},
		{[]string{"--label", "moatc.run-id=x"}, "moatc."},
		{[]string{"--cpus", "NaN"}, "--cpus"},
		{[]string{"--cpus", "-1"}, "--cpus"},
		{[]string{"--memory", "0"}, "--memory"},
		{[]string{"--pids-limit", "-5"}, "--pids-limit"},
		{[]string{"--stop-timeout", "-1"}, "--stop-timeout"},
		{[]string{"--tmpfs", "/x:suid"}, "--tmpfs"},
		{[]string{"-w", "rel"}, "--workdir"},
	} {
		r := moatcRun(t, opts{}, append(append([]string{"run"}, c.flags...), "--image", "busybox", ws, "--", "true")...)
		if r.code != 2 || !strings.Contains(r.stderr, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", c.flags, r.code, r.stderr, c.msg)
		}
	}
	r := moatcRun(t, opts{env: []string{"HOME=" + ws}}, "run", "--dry-run", "--image", "busybox", ws, "--", "true")
	if r.code != 0 || strings.Count(r.stderr, "warning: the workspace is your home directory") != 1 {
		t.Errorf("home as workspace: exit %d, stderr %q", r.code, r.stderr)
	}
	proj := workspace(t)
	os.WriteFile(filepath.Join(proj, "moatc.yaml"), []byte("base_image: debian:bookworm-slim\ndependencies: [jq]\n"), 0o644)
	r = moatcRun(t, opts{}, "run", "--dry-run", "--json", "--image", "busybox", proj, "--", "true")
	var p struct {
		Built struct {
			Base string `json:"base"`
		} `json:"built"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &p); err != nil || !strings.Contains(p.Built.Base, "busybox") {
		t.Errorf("--image busybox with base_image set: built from %q (%v)\n%s%s", p.Built.Base, err, r.stdout, r.stderr)
	}
}

// TestRunflagsKeepCommas: a flag's value is taken whole, commas and all, as Docker takes it.
func TestRunflagsKeepCommas(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "commas-" + rt
			r := mustRun(t, busyboxRun(rt, []string{"-n", name, "-e", "X=a,b,c", "--label", "k=a,b", "--tmpfs", "/t:exec,size=1m"}, ws,
				"sh", "-c", `echo "X=$X"; grep " /t " /proc/mounts`)...)
			defer moatcRun(t, opts{}, "destroy", name)
			if !strings.Contains(r.stdout, "X=a,b,c\n") || !strings.Contains(r.stdout, " /t tmpfs") {
				t.Fatalf("-e and --tmpfs with commas: %q", r.stdout)
			}
			if got := lines(mustRun(t, "list", "-q", "--filter", "label=k=a,b").stdout); len(got) != 1 {
				t.Fatalf("--label k=a,b: list --filter label=k=a,b found %v", got)
			}
		})
	}
}
