package e2e

import (
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestExec runs commands beside a detached workload: exit codes, env, directory, user, stdin,
// a TTY, signals with kill, and what an exec leaves behind when its moatc is killed.
func TestExec(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "exec-" + rt
			mustRun(t, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c",
				`trap "echo got-usr1" USR1; echo started; while :; do sleep 0.2; done`)...)
			defer moatcRun(t, opts{}, "destroy", "--force", name)

			if r := moatcRun(t, opts{}, "exec", name, "--", "sh", "-c", "echo from-exec; exit 7"); r.code != 7 || r.stdout != "from-exec\n" {
				t.Fatalf("exec exit: want 7 and from-exec, got %d %q %q", r.code, r.stdout, r.stderr)
			}
			r := moatcRun(t, opts{env: []string{"FROMHOST=hostval"}}, "exec", "-e", "FOO=bar", "-e", "FROMHOST", "-e", "UNSETONHOST_X",
				"-w", "/tmp", "-u", "1000:1000", name, "sh", "-c", `echo "$FOO $FROMHOST ${UNSETONHOST_X-unset} $PWD $(id -u):$(id -g)"`)
			if r.code != 0 || r.stdout != "bar hostval unset /tmp 1000:1000\n" {
				t.Fatalf("exec env/workdir/user: %d %q %q", r.code, r.stdout, r.stderr)
			}
			// The workload's own settings are the default.
			if r := mustRun(t, "exec", name, "--", "sh", "-c", "echo $PWD"); r.stdout != "/workspace\n" {
				t.Fatalf("default workdir: %q", r.stdout)
			}
			if r := moatcRun(t, opts{stdin: "line1\nline2\n"}, "exec", "-i", name, "--", "cat"); r.code != 0 || r.stdout != "line1\nline2\n" {
				t.Fatalf("exec -i: %d %q %q", r.code, r.stdout, r.stderr)
			}
			// Without -i the command reads EOF, not moatc's stdin.
			if r := moatcRun(t, opts{stdin: "secret-input\n"}, "exec", name, "--", "cat"); r.code != 0 || r.stdout != "" {
				t.Fatalf("exec without -i read stdin: %d %q", r.code, r.stdout)
			}
			// A TTY: script(1) gives moatc a terminal.
			out, err := exec.Command("script", "-eqc", moatc+" exec -it "+name+" -- sh -c 'test -t 0 && test -t 1 && echo has-tty; echo term=$TERM; exit 4'", "/dev/null").CombinedOutput()
			if code := exitCodeOf(err); code != 4 || !strings.Contains(string(out), "has-tty") || !strings.Contains(string(out), "term=xterm") {
				t.Fatalf("exec -it: exit %d (%v), output %q", code, err, out)
			}
			if r := moatcRun(t, opts{stdin: "x"}, "exec", "-t", name, "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "not a TTY") {
				t.Fatalf("exec -t without a terminal: %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "exec", name, "--", "no-such-command"); r.code != 127 {
				t.Fatalf("exec of a missing command: want 127, got %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "exec", name, "--", "/no/such/file"); r.code != 127 {
				t.Fatalf("exec of a missing path: want 127, got %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "exec", "-w", "relative", name, "--", "true"); r.code != 2 {
				t.Fatalf("exec -w relative: want 2, got %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "exec", name, "--", "/etc/passwd"); r.code != 126 {
				t.Fatalf("exec of a file that cannot run: want 126, got %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "exec", "no-such-run", "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "no such run") {
				t.Fatalf("exec into an unknown run: %d %q", r.code, r.stderr)
			}
			// An exec's output is its caller's: not in the run's log.
			if logs := mustRun(t, "logs", name).stdout; strings.Contains(logs, "from-exec") || !strings.Contains(logs, "started") {
				t.Fatalf("run's log: %q", logs)
			}

			// kill -s USR1 reaches the workload's trap; a bad signal is a usage error.
			mustRun(t, "kill", "-s", "USR1", name)
			waitFor(t, "the trap's output", func() bool { return strings.Contains(mustRun(t, "logs", name).stdout, "got-usr1") })
			if r := moatcRun(t, opts{}, "kill", "-s", "NOPE", name); r.code != 2 || !strings.Contains(r.stderr, "not a signal") {
				t.Fatalf("kill -s NOPE: %d %q", r.code, r.stderr)
			}

			// An exec whose moatc is killed: the run is as it was, and after its end nothing stays.
			cmd := exec.Command(moatc, "exec", name, "--", "sleep", "1000")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the exec'd sleep", func() bool {
				return strings.Contains(mustRun(t, "exec", name, "--", "ps").stdout, "sleep 1000")
			})
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
			if st := status(t, name); st.State != "running" {
				t.Fatalf("run after its exec's moatc was killed: %s", st.State)
			}
			running := 0
			for _, r := range list(t) {
				if r.State == "running" {
					running++
				}
			}
			if running != 1 {
				t.Fatalf("want the run alone running, got %d running", running)
			}
			id := status(t, name).ContainerID
			mustRun(t, "kill", name)
			if r := mustRun(t, "wait", name); r.stdout != "137\n" {
				t.Fatalf("wait after kill: %q", r.stdout)
			}
			// The supervisor records the end, then deletes the task (and the exec with it).
			waitFor(t, "the run's task to go", func() bool {
				for _, row := range ctrRows(t, "task", "ls") {
					if strings.HasPrefix(row, id) {
						return false
					}
				}
				return true
			})
			if r := moatcRun(t, opts{}, "exec", name, "--", "true"); r.code != 125 || !strings.Contains(r.stderr, "is not running") {
				t.Fatalf("exec into an ended run: %d %q", r.code, r.stderr)
			}
			if r := moatcRun(t, opts{}, "kill", name); r.code != 125 || !strings.Contains(r.stderr, "is not running") {
				t.Fatalf("kill of an ended run: %d %q", r.code, r.stderr)
			}
		})
	}
}

// TestWaitRestartAttach: wait prints the exit code, restart starts the same run again, and
// attach follows it to its end with its code.
func TestWaitRestartAttach(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "wra-" + rt
			mustRun(t, busyboxRun(rt, []string{"-d", "-n", name}, ws, "sh", "-c", "sleep 1; echo pass-$(cat /workspace/n 2>/dev/null); echo x >> /workspace/n; exit 5")...)
			defer moatcRun(t, opts{}, "destroy", "--force", name)
			if r := mustRun(t, "wait", name); r.stdout != "5\n" {
				t.Fatalf("wait: want 5, got %q", r.stdout)
			}
			before := status(t, name)
			mustRun(t, "restart", name)
			r := moatcRun(t, opts{}, "attach", name)
			if r.code != 5 || !strings.Contains(r.stdout, "pass-x") || strings.Contains(r.stdout, "pass-\n") {
				t.Fatalf("attach after restart: want exit 5 and only the new output, got %d %q %q", r.code, r.stdout, r.stderr)
			}
			var after struct {
				ID       string `json:"id"`
				Restarts int    `json:"restarts"`
				ExitCode *int   `json:"exit_code"`
			}
			if err := json.Unmarshal([]byte(mustRun(t, "status", "--json", name).stdout), &after); err != nil {
				t.Fatal(err)
			}
			if after.ID != before.ID || after.Restarts != 1 || after.ExitCode == nil || *after.ExitCode != 5 {
				t.Fatalf("record after restart: %+v", after)
			}
			if logs := mustRun(t, "logs", name).stdout; logs != "pass-\npass-x\n" {
				t.Fatalf("the log keeps both runs' output: %q", logs)
			}
			// Restart of a running run stops it first.
			mustRun(t, busyboxRun(rt, []string{"-d", "-n", name + "-long"}, ws, "sleep", "1000")...)
			defer moatcRun(t, opts{}, "destroy", "--force", name+"-long")
			mustRun(t, "restart", "-t", "0", name+"-long")
			if st := status(t, name+"-long"); st.State != "running" {
				t.Fatalf("after restart: %s", st.State)
			}
			// A --rm run's record goes when it ends; wait still gets its code (from the events).
			mustRun(t, busyboxRun(rt, []string{"-d", "--rm", "-n", name + "-rm"}, ws, "sh", "-c", "sleep 1; exit 3")...)
			if r := mustRun(t, "wait", name+"-rm"); r.stdout != "3\n" {
				t.Fatalf("wait on a -d --rm run: want 3, got %q", r.stdout)
			}
			if r := moatcRun(t, opts{}, "wait", "no-such-run"); r.code != 125 || !strings.Contains(r.stderr, "no such run") {
				t.Fatalf("wait on an unknown run: %d %q", r.code, r.stderr)
			}
		})
	}
}

func exitCodeOf(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
