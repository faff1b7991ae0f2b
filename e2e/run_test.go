package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
)

func TestExitCodes(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		for _, c := range []struct {
			script string
			want   int
		}{{"exit 0", 0}, {"exit 1", 1}, {"exit 3", 3}, {"exit 255", 255}, {"sleep 1; exit 3", 3}, {"sleep 1; exit 255", 255}} {
			t.Run(fmt.Sprintf("%s/%s", rt, c.script), func(t *testing.T) {
				ws := workspace(t)
				args := busyboxRun(rt, []string{}, ws, "sh", "-c", c.script)
				r := moatcRun(t, opts{}, args...)
				if r.code != c.want {
					t.Fatalf("exit %d, want %d; stderr: %s", r.code, c.want, r.stderr)
				}
			})
		}
	}
}

func TestStdoutStderrSeparateAndRecorded(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "sep-" + rt
			args := busyboxRun(rt, []string{"-n", name}, ws, "sh", "-c", "echo to-out; echo to-err >&2; printf no-newline")
			r := moatcRun(t, opts{}, args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			if r.stdout != "to-out\nno-newline" {
				t.Errorf("stdout %q", r.stdout)
			}
			if !strings.Contains(r.stderr, "to-err\n") || strings.Contains(r.stderr, "to-out") {
				t.Errorf("stderr %q", r.stderr)
			}
			l := mustRun(t, "logs", name)
			if l.stdout != "to-out\nno-newline" || strings.TrimSpace(l.stderr) != "to-err" {
				t.Errorf("logs: stdout %q stderr %q", l.stdout, l.stderr)
			}
			if st := status(t, name); st.Spec.Runtime != rt {
				t.Errorf("status says runtime %q, want %q", st.Spec.Runtime, rt)
			}
		})
	}
}

func TestStdinPiped(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			args := busyboxRun(rt, []string{"-i"}, ws, "sh", "-c", "tr a-z A-Z; echo done")
			r := moatcRun(t, opts{stdin: "hello\nworld\n"}, args...)
			if r.code != 0 || r.stdout != "HELLO\nWORLD\ndone\n" {
				t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
			// Without -i, as with Docker, stdin is not the workload's: it reads EOF.
			args = busyboxRun(rt, []string{}, ws, "sh", "-c", "tr a-z A-Z; echo done")
			r = moatcRun(t, opts{stdin: "hello\nworld\n"}, args...)
			if r.code != 0 || r.stdout != "done\n" {
				t.Fatalf("without -i: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestLargeOutputComplete(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			// 10 MB: 1,000,000 numbered lines of 10 bytes, in order.
			args := busyboxRun(rt, []string{}, ws, "sh", "-c", "seq -w 0 999999 | sed 's/$/abc/'")
			r := moatcRun(t, opts{}, args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			if len(r.stdout) != 10_000_000 {
				t.Fatalf("got %d bytes, want 10000000", len(r.stdout))
			}
			sc := bufio.NewScanner(strings.NewReader(r.stdout))
			for i := 0; sc.Scan(); i++ {
				if want := fmt.Sprintf("%06dabc", i); sc.Text() != want {
					t.Fatalf("line %d is %q, want %q", i, sc.Text(), want)
				}
			}
		})
	}
}

func TestTTY(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			args := busyboxRun(rt, []string{"-i"}, ws, "sh")
			cmd := exec.Command(moatc, args...)
			f, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 33, Cols: 101})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			var mu sync.Mutex
			var out strings.Builder
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := f.Read(buf)
					mu.Lock()
					out.Write(buf[:n])
					mu.Unlock()
					if err != nil {
						return
					}
				}
			}()
			io.WriteString(f, "[ -t 0 ] && [ -t 1 ] && echo is-a-tty; stty size; echo sum=$((6*7))\n")
			// A resize of the caller's terminal reaches the workload's TTY (SIGWINCH to moatc).
			waitFor := func(want string) {
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
					mu.Lock()
					got := out.String()
					mu.Unlock()
					if strings.Contains(got, want) {
						return
					}
				}
			}
			waitFor("sum=42")
			pty.Setsize(f, &pty.Winsize{Rows: 40, Cols: 120})
			time.Sleep(300 * time.Millisecond)
			io.WriteString(f, "stty size; exit 7\n")
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("TTY run did not end; output so far: %q", out.String())
			}
			time.Sleep(100 * time.Millisecond)
			mu.Lock()
			got := out.String()
			mu.Unlock()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 7 {
				t.Errorf("exit: %v, want 7; output %q", err, got)
			}
			for _, want := range []string{"is-a-tty", "33 101", "sum=42", "40 120"} {
				if !strings.Contains(got, want) {
					t.Errorf("TTY output lacks %q: %q", want, got)
				}
			}
		})
	}
}

func TestEnvAndConfigFile(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	cfg := "name: cfg-run\nimage: busybox\nenv:\n  FROM_FILE: file\n  OVERRIDDEN: file\ncommand: [sh, -c, 'echo $FROM_FILE $OVERRIDDEN $FROM_FLAG $HOSTVAL']\nsandbox: none\n"
	if err := os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "trust", ws) // sandbox: none is a policy key
	r := moatcRun(t, opts{env: []string{"HOSTVAL=fromhost"}}, "run", "-e", "OVERRIDDEN=flag", "-e", "FROM_FLAG=flag", "-e", "HOSTVAL", ws)
	if r.code != 0 || r.stdout != "file flag flag fromhost\n" {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	if st := status(t, "cfg-run"); st.Spec.Runtime != "runc" || !strings.HasSuffix(st.Spec.Image, "busybox:latest") {
		t.Errorf("config not applied: %+v", st)
	}
	// Flags override the file.
	r = moatcRun(t, opts{}, "run", "-n", "cfg-run-2", "--image", "debian:bookworm-slim", ws, "--", "cat", "/etc/debian_version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "12") {
		t.Fatalf("exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
}

func TestWorkspaceOwnerAndMounts(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			if err := os.Chown(ws, 4321, 4322); err != nil {
				t.Fatal(err)
			}
			ro := workspace(t)
			os.Chmod(ro, 0o755)
			os.WriteFile(filepath.Join(ro, "data"), []byte("ro-data"), 0o644)
			args := append(append([]string{"run"}, sandboxArgs(rt)...), "--image", "busybox", "-m", ro+":/ro:ro", ws, "--", "sh", "-c",
				"id -u; id -g; pwd; echo written > /workspace/out; cat /ro/data; echo; if echo x > /ro/new 2>/dev/null; then echo RO-WRITABLE; else echo ro-refused; fi")
			r := moatcRun(t, opts{}, args...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			if r.stdout != "4321\n4322\n/workspace\nro-data\nro-refused\n" {
				t.Errorf("stdout %q", r.stdout)
			}
			fi, err := os.Stat(filepath.Join(ws, "out"))
			if err != nil {
				t.Fatalf("workspace write not visible on the host: %v", err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Uid != 4321 || st.Gid != 4322 {
				t.Errorf("file owned by %d:%d, want 4321:4322", st.Uid, st.Gid)
			}
			if _, err := os.Stat(filepath.Join(ro, "new")); err == nil {
				t.Errorf("a read-only mount was written to")
			}
		})
	}
}

func TestKernelIsGVisorUnlessNoSandbox(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	host, _ := os.ReadFile("/proc/version")
	// (dmesg, which would say "Starting gVisor", is refused by the seccomp profile, as in Docker.)
	g := moatcRun(t, opts{}, "run", "--image", "busybox", ws, "--", "cat", "/proc/version")
	if g.code != 0 || !strings.Contains(g.stdout, "-gvisor ") {
		t.Errorf("default run does not show gVisor's kernel: exit %d %q %s", g.code, g.stdout, g.stderr)
	}
	if strings.Contains(g.stdout, strings.TrimSpace(string(host))) {
		t.Errorf("default run shows the host kernel: %q", g.stdout)
	}
	r := moatcRun(t, opts{}, "run", "--no-sandbox", "--image", "busybox", ws, "--", "cat", "/proc/version")
	if r.code != 0 || r.stdout != string(host) {
		t.Errorf("--no-sandbox does not show the host kernel: %q vs %q", r.stdout, host)
	}
	if !strings.Contains(r.stderr, "reduced isolation") {
		t.Errorf("--no-sandbox printed no warning: %q", r.stderr)
	}
}

// TestSandboxMissingIsAnActionableError: with the shim and runsc nowhere to be found, a
// default run fails before anything is created, says how to install them and how to bypass,
// and never falls back to runc silently.
func TestSandboxMissingIsAnActionableError(t *testing.T) {
	requireStack(t)
	fake := t.TempDir()
	os.MkdirAll(filepath.Join(fake, "bin"), 0o755)
	for _, b := range []string{"containerd", "ctr", "containerd-shim-runc-v2", "runc"} {
		if err := os.Symlink(filepath.Join(prefix, "bin", b), filepath.Join(fake, "bin", b)); err != nil {
			t.Fatal(err)
		}
	}
	before := len(list(t))
	ws := workspace(t)
	r := moatcRun(t, opts{env: []string{"MOATC_PREFIX=" + fake, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}}, "run", "--image", "busybox", ws, "--", "true")
	if r.code != 125 {
		t.Errorf("exit %d, want 125", r.code)
	}
	for _, want := range []string{"gVisor sandbox is not available", "containerd-shim-runsc-v1", "make setup", "--no-sandbox"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("error lacks %q: %s", want, r.stderr)
		}
	}
	if after := len(list(t)); after != before {
		t.Errorf("a run record was created: %d -> %d", before, after)
	}
}

// TestSandboxPlatforms: ptrace works everywhere; kvm either works or, where /dev/kvm is
// missing or does not work (this VM), fails with the fix and leaves no sandbox spinning.
func TestSandboxPlatforms(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	if r := moatcRun(t, opts{}, "run", "--sandbox-platform", "ptrace", "--network", "none", "--image", "busybox", ws, "--", "sh", "-c", "exit 3"); r.code != 3 {
		t.Errorf("ptrace: exit %d, want 3: %s", r.code, r.stderr)
	}
	r := moatcRun(t, opts{}, "run", "--sandbox-platform", "kvm", "--network", "none", "--image", "busybox", ws, "--", "true")
	switch {
	case r.code == 0:
		t.Log("kvm works on this host")
	case r.code == 125 && strings.Contains(r.stderr, "kvm") && strings.Contains(r.stderr, "systrap"):
		t.Logf("kvm refused as expected here: %s", r.stderr)
	default:
		t.Errorf("kvm: exit %d %q", r.code, r.stderr)
	}
	out, _ := exec.Command("sh", "-c", "ps -eo args | grep -c '^runsc-sandbox.*--platform=kvm'").Output()
	if strings.TrimSpace(string(out)) != "0" {
		t.Errorf("a kvm sandbox was left running")
	}
	if rows := ctrRows(t, "containers", "ls"); len(rows) > 0 {
		for _, row := range rows {
			if strings.Contains(row, "probe") {
				t.Errorf("probe container left: %s", row)
			}
		}
	}
}
