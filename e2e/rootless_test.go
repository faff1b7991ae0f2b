package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The rootless tests run moatc as an unprivileged user, on the rootless containerd that moatc
// starts itself for that user, with a home of the user's own.
const rootlessUser = "moatcrl"

var rl struct {
	once sync.Once
	err  error
	uid  int
	gid  int
	dir  string // the user's MOATC_HOME, holding a copy of the binary too
	bin  string
	user string
	hdir string // the user's home directory
}

// rootless prepares the user and its moatc home once: the user (made by
// scripts/rootless-user.sh when missing), a copy of moatc it can run, and the busybox image in
// its store.
func rootless(t *testing.T) {
	t.Helper()
	requireStack(t)
	rl.once.Do(func() { rl.err = prepareRootless() })
	if rl.err != nil {
		t.Fatalf("preparing the rootless user: %v", rl.err)
	}
}

func prepareRootless() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("the rootless tests are driven by root (they make and use the user %s)", rootlessUser)
	}
	if _, err := user.Lookup(rootlessUser); err != nil {
		if out, err := exec.Command("bash", filepath.Join(repo, "scripts/rootless-user.sh"), "--create", rootlessUser).CombinedOutput(); err != nil {
			return fmt.Errorf("scripts/rootless-user.sh --create %s: %v\n%s", rootlessUser, err, out)
		}
	}
	u, err := user.Lookup(rootlessUser)
	if err != nil {
		return err
	}
	rl.uid, _ = strconv.Atoi(u.Uid)
	rl.gid, _ = strconv.Atoi(u.Gid)
	rl.user, rl.hdir = u.Username, u.HomeDir
	// Short, for the socket paths; /tmp so the user can reach it.
	rl.dir, err = os.MkdirTemp("/tmp", "moatc-rl-")
	if err != nil {
		return err
	}
	rl.bin = filepath.Join(rl.dir, "moatc")
	if err := copyFile(moatc, rl.bin, 0o755); err != nil {
		return err
	}
	tar := filepath.Join(rl.dir, "busybox.oci.tar")
	if err := copyFile(filepath.Join(prefix, "images", "busybox.oci.tar"), tar, 0o644); err != nil {
		return err
	}
	if err := filepath.Walk(rl.dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, rl.uid, rl.gid)
	}); err != nil {
		return err
	}
	if r := rlExec(context.Background(), opts{}, "image", "import", tar); r.code != 0 {
		return fmt.Errorf("moatc image import as %s: exit %d: %s%s", rootlessUser, r.code, r.stdout, r.stderr)
	}
	return nil
}

// teardownRootless stops the user's stack and checks nothing of it is left: no process of the
// user, no mount under its home.
func teardownRootless() []string {
	if rl.dir == "" {
		return nil
	}
	var errs []string
	ctx := context.Background()
	for _, args := range [][]string{{"clean"}, {"system", "stop", "--force"}} {
		if r := rlExec(ctx, opts{}, args...); r.code != 0 {
			errs = append(errs, fmt.Sprintf("rootless moatc %v: exit %d: %s", args, r.code, r.stderr))
		}
	}
	if procs := userProcesses(rl.uid, rl.dir); len(procs) > 0 {
		errs = append(errs, "processes of "+rootlessUser+" left behind: "+strings.Join(procs, "; "))
	}
	if len(errs) == 0 {
		os.RemoveAll(rl.dir)
	}
	return errs
}

// userProcesses lists, as "PID CMDLINE", the live processes of user uid that belong to the
// moatc home dir: named in their command line or carrying it as MOATC_HOME (everything moatc
// starts inherits it: rootlesskit, containerd, shims, sandboxes). Other homes of the same user
// (people trying things by hand) are not this test's.
func userProcesses(uid int, dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		mine, zombie := false, false
		for _, l := range strings.Split(string(st), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "Uid:" && f[1] == strconv.Itoa(uid) {
				mine = true
			}
			if len(f) >= 2 && f[0] == "State:" && f[1] == "Z" {
				zombie = true
			}
		}
		if !mine || zombie {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if bytes.Contains(cmd, []byte(dir)) || bytes.Contains(env, []byte("MOATC_HOME="+dir+"\x00")) {
			out = append(out, fmt.Sprintf("%d %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
		}
	}
	return out
}

// rlExec runs the rootless moatc as the user.
func rlExec(ctx context.Context, o opts, args ...string) result {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, rl.bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if o.stdin != "" {
		cmd.Stdin = strings.NewReader(o.stdin)
	}
	cmd.Env = append([]string{
		"HOME=" + rl.hdir, "USER=" + rl.user, "LOGNAME=" + rl.user,
		"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"MOATC_HOME=" + rl.dir, "MOATC_PREFIX=" + prefix,
	}, o.env...)
	cmd.Dir = o.dir
	if cmd.Dir == "" {
		cmd.Dir = rl.dir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(rl.uid), Gid: uint32(rl.gid), Groups: []uint32{}}}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return result{stderr: err.Error(), code: -1}
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// rlRun runs the rootless moatc and fails the test unless it exits with code want.
func rlRun(t *testing.T, want int, args ...string) result {
	t.Helper()
	r := rlExec(context.Background(), opts{}, args...)
	if r.code != want {
		t.Fatalf("rootless moatc %v: exit %d, want %d\nstdout: %s\nstderr: %s", args, r.code, want, r.stdout, r.stderr)
	}
	return r
}

// rlWorkspace makes an empty workspace owned by the user.
func rlWorkspace(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(rl.dir, "ws-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(d, rl.uid, rl.gid); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// TestRootlessRun: as an ordinary user, a run under each runtime passes its exit code through,
// and what the workload writes into the workspace is owned by the user on the host.
func TestRootlessRun(t *testing.T) {
	rootless(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := rlWorkspace(t)
			r := rlRun(t, 3, busyboxRun(rt, nil, ws, "sh", "-c", "id -u; uname -r; echo hi > made; exit 3")...)
			if !strings.HasPrefix(r.stdout, "0\n") {
				t.Errorf("the workload is root of its user namespace, so id -u prints 0; got %q", r.stdout)
			}
			if rt == "gvisor" && !strings.Contains(r.stdout, "gvisor") {
				t.Errorf("uname -r under gVisor: %q", r.stdout)
			}
			fi, err := os.Stat(filepath.Join(ws, "made"))
			if err != nil {
				t.Fatalf("the workload's file: %v", err)
			}
			if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != rl.uid || int(st.Gid) != rl.gid {
				t.Errorf("the workload's file is owned by %d:%d on the host, want the user's %d:%d", st.Uid, st.Gid, rl.uid, rl.gid)
			}
		})
	}
}

// TestRootlessForeignContainerd: a non-root user pointed at root's containerd is told which
// containerd moatc uses and why, and how to use it.
func TestRootlessForeignContainerd(t *testing.T) {
	rootless(t)
	dir, err := os.MkdirTemp("/tmp", "moatc-rootsock-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "containerd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	os.Chmod(sock, 0o600) // root's, as a rootful containerd's socket is
	r := rlRun(t, 125, "--address", sock, "list")
	for _, want := range []string{"not this user's", "rootless containerd", "drop --address"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, r.stderr)
		}
	}
}

// TestRootlessDoctorAndBuild: as the user, doctor passes every required check (the rootless
// ones, and a probe container under each runtime), and a dependency image is built by
// BuildKit on the rootless containerd, its RUN steps under gVisor, then used by a run.
func TestRootlessDoctorAndBuild(t *testing.T) {
	rootless(t)
	r := rlRun(t, 0, "doctor", "--json")
	seen := requireChecks(t, r.stdout)
	for _, want := range []string{"rootless: subuid", "rootless: newuidmap", "rootless: rootlesskit", "rootless: /dev/net/tun", "probe run under gvisor", "probe run under runc"} {
		if !seen[want] {
			t.Errorf("doctor as the user has no %q check", want)
		}
	}

	tar := filepath.Join(rl.dir, "debian.oci.tar")
	if err := copyFile(filepath.Join(prefix, "images", "debian-bookworm-slim.oci.tar"), tar, 0o644); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tar)
	rlRun(t, 0, "image", "import", tar)
	ws := rlWorkspace(t)
	if err := os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - jq\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = rlRun(t, 0, "run", "-q", ws, "--", "sh", "-c", "echo '{\"a\":[1,2]}' | jq -c .a")
	if r.stdout != "[1,2]\n" {
		t.Errorf("jq from the dependency image: %q (stderr %s)", r.stdout, r.stderr)
	}
}

// TestRootlessPrerequisiteMissing: a user with no subordinate ids gets, before anything
// starts, the list of what is missing with the exact command that fixes it, and no stack.
func TestRootlessPrerequisiteMissing(t *testing.T) {
	rootless(t)
	const name = "moatcrl-noids"
	if _, err := user.Lookup(name); err != nil {
		// Debian's useradd adds subordinate ids itself unless told not to.
		if out, err := exec.Command("useradd", "-M", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", "-s", "/bin/sh", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd %s: %v\n%s", name, err, out)
		}
	}
	defer exec.Command("userdel", name).Run()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("/tmp", "moatc-noids-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	os.Chown(dir, uid, gid)
	bin := filepath.Join(dir, "moatc")
	if err := copyFile(moatc, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--image", "busybox", dir, "--", "true")
	cmd.Env = []string{"HOME=" + dir, "USER=" + name, "PATH=/usr/bin:/bin:/usr/sbin:/sbin", "MOATC_HOME=" + filepath.Join(dir, "home"), "MOATC_PREFIX=" + prefix}
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 125 {
		t.Fatalf("moatc run without subordinate ids: %v, want exit 125\n%s", err, out)
	}
	for _, want := range []string{"rootless mode is not set up for " + name, "subuid", "sudo usermod --add-subuids", "--add-subgids", "make rootless-user USER=" + name} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the error lacks %q:\n%s", want, out)
		}
	}
	if procs := userProcesses(uid, dir); len(procs) > 0 {
		t.Errorf("a failed start left processes: %v", procs)
	}
	if _, err := os.Stat(filepath.Join(dir, "home", "rootless", "child_pid")); err == nil {
		t.Errorf("rootlesskit was started although its prerequisites are missing")
	}
}

// TestRootlessUsersOwnContainerd: --address at a rootless containerd the user runs in nerdctl's
// layout (SOCKETDIR/containerd.sock, its rootlesskit's state in containerd-rootless beside
// SOCKETDIR) is used: moatc enters that rootlesskit's namespaces and runs there.
func TestRootlessUsersOwnContainerd(t *testing.T) {
	rootless(t)
	rlRun(t, 0, "system", "start") // the user's "own" containerd: the one the suite's user home runs
	layout := filepath.Join(rl.dir, "xdg")
	for _, d := range []string{layout, filepath.Join(layout, "containerd")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chown(d, rl.uid, rl.gid)
	}
	defer os.RemoveAll(layout)
	sock := filepath.Join(layout, "containerd", "containerd.sock")
	if err := os.Symlink(filepath.Join(rl.dir, "containerd", "containerd.sock"), sock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(rl.dir, "rootless"), filepath.Join(layout, "containerd-rootless")); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(rl.dir, "other-home")
	os.MkdirAll(other, 0o700)
	os.Chown(other, rl.uid, rl.gid)
	defer os.RemoveAll(other)
	ws := rlWorkspace(t)
	r := rlRun(t, 0, "--home", other, "--address", sock, "run", "--rm", "--image", "busybox", ws, "--", "sh", "-c", "echo via-own > f")
	if b, err := os.ReadFile(filepath.Join(ws, "f")); err != nil || string(b) != "via-own\n" {
		t.Fatalf("the run through the user's own containerd wrote %q (%v); stderr %s", b, err, r.stderr)
	}
	if fi, _ := os.Stat(filepath.Join(ws, "f")); int(fi.Sys().(*syscall.Stat_t).Uid) != rl.uid {
		t.Errorf("the file is owned by uid %d, want the user's %d (a run in the user's namespaces)", fi.Sys().(*syscall.Stat_t).Uid, rl.uid)
	}
	if _, err := os.Stat(filepath.Join(other, "rootless")); err == nil {
		t.Errorf("moatc started a kit of its own although --address named the user's")
	}
}
