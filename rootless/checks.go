// Package rootless runs moatc for a user who is not root: its own containerd in a user
// namespace made by rootlesskit.
package rootless

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Problem is a prerequisite that is not met, and what to run to meet it.
type Problem struct {
	Name   string
	Detail string
	Fix    string // the exact command(s) an admin or the user must run
}

// Result is one check of the rootless prerequisites. Informational checks are always OK.
type Result struct {
	Name   string
	OK     bool
	Detail string
	Fix    string
}

// PrerequisiteError lists every failing prerequisite of rootless mode, each with its fix.
type PrerequisiteError struct {
	User     string
	Problems []Problem
}

func (e *PrerequisiteError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rootless mode is not set up for %s (%d problem(s)); an admin fixes it once:", e.User, len(e.Problems))
	for _, p := range e.Problems {
		fmt.Fprintf(&b, "\n  %s: %s\n    fix: %s", p.Name, p.Detail, p.Fix)
	}
	b.WriteString("\n(or, as root in the moatc source tree: make setup && make rootless-user USER=" + e.User + "); then check with `moatc doctor`")
	return b.String()
}

// Check runs every rootless check, in order, for the moatc home in $MOATC_HOME (default
// ~/.moatc).
func Check() []Result { return CheckHome(defaultHome()) }

// CheckHome is Check for the given moatc home (moatc's --home).
func CheckHome(home string) []Result {
	var out []Result
	for _, p := range hostPrereqs(home, true).run() {
		out = append(out, p.Result)
	}
	return out
}

// Preflight runs the required checks and returns a *PrerequisiteError naming every one that
// fails, or nil. It starts no process unless one is needed to decide (the user namespace probe
// is a clone that fails its exec on purpose; rootlesskit --version only when slirp4netns is
// missing and pasta could stand in).
func Preflight() error { return PreflightHome(defaultHome()) }

// PreflightHome is Preflight for the given moatc home.
func PreflightHome(home string) error {
	env := hostPrereqs(home, false)
	var probs []Problem
	for _, p := range env.run() {
		if p.required && !p.OK {
			probs = append(probs, Problem{Name: p.Name, Detail: p.Detail, Fix: p.Fix})
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return &PrerequisiteError{User: env.userName(), Problems: probs}
}

func defaultHome() string {
	if h := os.Getenv("MOATC_HOME"); h != "" {
		return h
	}
	h, err := os.UserHomeDir()
	if err != nil {
		return ".moatc"
	}
	return filepath.Join(h, ".moatc")
}

// prereqEnv is where the checks look; the paths are fields so tests can point them at files.
type prereqEnv struct {
	uid        int
	name       string // "" when the uid has no passwd entry
	home       string // moatc's home
	subuid     string // /etc/subuid
	subgid     string // /etc/subgid
	procSys    string // /proc/sys
	tun        string // /dev/net/tun
	rootful    string // the rootful containerd's socket
	runtimeDir string // $XDG_RUNTIME_DIR, or /run/user/UID
	lookPath   func(string) (string, error)
	versions   bool // run rootlesskit --version even when nothing depends on it
}

func hostPrereqs(home string, versions bool) *prereqEnv {
	e := &prereqEnv{
		uid: HostUID(), home: home,
		subuid: "/etc/subuid", subgid: "/etc/subgid", procSys: "/proc/sys", tun: "/dev/net/tun",
		rootful:    "/run/containerd/containerd.sock",
		runtimeDir: os.Getenv("XDG_RUNTIME_DIR"),
		lookPath:   exec.LookPath, versions: versions,
	}
	if u, err := user.LookupId(strconv.Itoa(e.uid)); err == nil {
		e.name = u.Username
	}
	if e.runtimeDir == "" {
		e.runtimeDir = fmt.Sprintf("/run/user/%d", e.uid)
	}
	return e
}

// userName is the name for the fixes; usermod and setfacl accept a bare uid too.
func (e *prereqEnv) userName() string {
	if e.name != "" {
		return e.name
	}
	return strconv.Itoa(e.uid)
}

type prereq struct {
	Result
	required bool
}

func (e *prereqEnv) run() []prereq {
	rk := e.rootlesskitCheck()
	return []prereq{
		e.userCheck(),
		e.userNSCheck(),
		e.subIDCheck("subuid", e.subuid, "--add-subuids"),
		e.subIDCheck("subgid", e.subgid, "--add-subgids"),
		e.idmapCheck("newuidmap"),
		e.idmapCheck("newgidmap"),
		rk.prereq,
		e.netCheck(rk),
		e.tunCheck(),
		e.homeCheck(),
		e.socketsCheck(),
	}
}

func (e *prereqEnv) userCheck() prereq {
	if e.uid == 0 {
		return prereq{Result: Result{Name: "user", OK: true, Detail: "root: moatc runs rootful; the rootless checks are for other users"}}
	}
	return prereq{Result: Result{Name: "user", OK: true,
		Detail: fmt.Sprintf("%s (uid %d), not root: moatc runs rootless, its own containerd in a user namespace (rootlesskit)", e.userName(), e.uid)}}
}

// userNSCheck reads the sysctls that turn user namespaces off, then makes one: a clone with
// CLONE_NEWUSER whose exec fails on purpose (ENOTDIR), so no program runs. An error other
// than ENOTDIR came from the clone.
func (e *prereqEnv) userNSCheck() prereq {
	p := prereq{required: true, Result: Result{Name: "user namespaces"}}
	max, err := os.ReadFile(filepath.Join(e.procSys, "user", "max_user_namespaces"))
	if err != nil {
		p.Detail, p.Fix = "the kernel has no user namespaces ("+err.Error()+")", "use a kernel built with CONFIG_USER_NS=y (Debian's has it)"
		return p
	}
	n := strings.TrimSpace(string(max))
	if n == "0" {
		p.Detail = "user.max_user_namespaces is 0"
		p.Fix = "sudo sysctl -w user.max_user_namespaces=15000 && echo user.max_user_namespaces=15000 | sudo tee /etc/sysctl.d/90-moatc-userns.conf"
		return p
	}
	// Debian kernels before 5.10 and some others carry this knob.
	if b, err := os.ReadFile(filepath.Join(e.procSys, "kernel", "unprivileged_userns_clone")); err == nil && strings.TrimSpace(string(b)) == "0" {
		p.Detail = "kernel.unprivileged_userns_clone is 0"
		p.Fix = "sudo sysctl -w kernel.unprivileged_userns_clone=1 && echo kernel.unprivileged_userns_clone=1 | sudo tee /etc/sysctl.d/90-moatc-userns.conf"
		return p
	}
	if err := probeUserNS(); err != nil {
		p.Detail = "cannot create a user namespace: " + err.Error()
		p.Fix = "sudo sysctl -w user.max_user_namespaces=15000 (if a security module forbids user namespaces, allow them for rootlesskit)"
		return p
	}
	p.OK, p.Detail = true, "max_user_namespaces="+n+"; a user namespace was created"
	// Ubuntu 24.04: the namespace is made, but without capabilities unless AppArmor allows it.
	if b, err := os.ReadFile(filepath.Join(e.procSys, "kernel", "apparmor_restrict_unprivileged_userns")); err == nil && strings.TrimSpace(string(b)) == "1" {
		p.Detail += "; kernel.apparmor_restrict_unprivileged_userns=1: rootlesskit needs an AppArmor profile that allows userns"
	}
	return p
}

func probeUserNS() error {
	_, err := os.StartProcess("/dev/null/x", []string{"moatc-userns-probe"}, &os.ProcAttr{
		Sys: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER},
	})
	if errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	if err == nil {
		return errors.New("the probe's exec of /dev/null/x unexpectedly succeeded")
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err // the clone's own errno, e.g. "operation not permitted"
	}
	return err
}

// subIDRange is one line of /etc/subuid or /etc/subgid: OWNER:START:COUNT, where OWNER is a
// user name or a uid.
type subIDRange struct {
	Owner        string
	Start, Count uint64
}

// minSubIDs is what a container image needs: ids 0-65535 inside (nobody is 65534).
const minSubIDs = 65536

// parseSubIDs reads a subordinate id file. Comments, blank and malformed lines are skipped,
// as shadow's newuidmap does.
func parseSubIDs(r io.Reader) ([]subIDRange, error) {
	var out []subIDRange
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ":")
		if len(f) != 3 || f[0] == "" {
			continue
		}
		start, err1 := strconv.ParseUint(f[1], 10, 32)
		count, err2 := strconv.ParseUint(f[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 {
			continue
		}
		out = append(out, subIDRange{Owner: f[0], Start: start, Count: count})
	}
	return out, sc.Err()
}

// subIDsFor returns the ranges of a user, named either way.
func subIDsFor(all []subIDRange, name string, uid int) []subIDRange {
	var out []subIDRange
	for _, r := range all {
		if (name != "" && r.Owner == name) || r.Owner == strconv.Itoa(uid) {
			out = append(out, r)
		}
	}
	return out
}

// freeSubIDStart is where a new range of minSubIDs can go: after every existing range and
// not below 100000, as Debian's useradd allocates (SUB_UID_MIN).
func freeSubIDStart(all []subIDRange) uint64 {
	start := uint64(100000)
	for _, r := range all {
		if end := r.Start + r.Count; end > start {
			start = end
		}
	}
	return start
}

func (e *prereqEnv) subIDCheck(name, path, flag string) prereq {
	p := prereq{required: true, Result: Result{Name: name}}
	var all []subIDRange
	f, err := os.Open(path)
	if err == nil {
		all, err = parseSubIDs(f)
		f.Close()
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		p.Detail, p.Fix = "reading "+path+": "+err.Error(), "sudo chmod 0644 "+path
		return p
	}
	mine := subIDsFor(all, e.name, e.uid)
	var total uint64
	var parts []string
	for _, r := range mine {
		total += r.Count
		parts = append(parts, fmt.Sprintf("%d-%d", r.Start, r.Start+r.Count-1))
	}
	start := freeSubIDStart(all)
	p.Fix = fmt.Sprintf("sudo usermod %s %d-%d %s", flag, start, start+minSubIDs-1, e.userName())
	switch {
	case len(mine) == 0:
		p.Detail = fmt.Sprintf("no range for %s in %s: the user namespace could map only your own id", e.userName(), path)
	case total < minSubIDs:
		p.Detail = fmt.Sprintf("%s has %d ids in %s (%s); images need %d (ids 0-65535 inside)", e.userName(), total, path, strings.Join(parts, ", "), minSubIDs)
	default:
		p.OK, p.Fix = true, ""
		p.Detail = fmt.Sprintf("%d ids (%s) in %s", total, strings.Join(parts, ", "), path)
	}
	return p
}

// idmapCheck: rootlesskit maps the subordinate ids with newuidmap/newgidmap, which need to be
// setuid root or to carry file capabilities.
func (e *prereqEnv) idmapCheck(name string) prereq {
	p := prereq{required: true, Result: Result{Name: name}}
	path, err := e.lookPath(name)
	if err != nil {
		p.Detail, p.Fix = name+" is not on PATH", "sudo apt-get install -y uidmap"
		for _, dir := range []string{"/usr/bin", "/usr/sbin"} {
			if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
				p.Detail, p.Fix = name+" is in "+dir+", which is not on your PATH", "export PATH=$PATH:"+dir
			}
		}
		return p
	}
	st, err := os.Stat(path)
	if err != nil {
		p.Detail, p.Fix = err.Error(), "sudo apt-get install --reinstall -y uidmap"
		return p
	}
	sys, _ := st.Sys().(*syscall.Stat_t)
	// Inside moatc's user namespace the host's root is unmapped and shows as the overflow uid.
	if st.Mode()&fs.ModeSetuid != 0 && sys != nil && (sys.Uid == 0 || InUserNamespace() && sys.Uid == overflowUID()) {
		p.OK, p.Detail = true, path+" (setuid root)"
		return p
	}
	if n, err := unix.Getxattr(path, "security.capability", nil); err == nil && n > 0 {
		p.OK, p.Detail = true, path+" (file capabilities)"
		return p
	}
	p.Detail = path + " is neither setuid root nor has file capabilities, so it cannot write the id map"
	p.Fix = "sudo chown root: " + path + " && sudo chmod u+s " + path
	return p
}

type rootlesskitInfo struct {
	prereq
	path    string
	version string // "" when not asked
	major   int
}

var rootlesskitVersion = regexp.MustCompile(`version (\d+)\.(\d+)\.(\d+)`)

func (e *prereqEnv) rootlesskitCheck() rootlesskitInfo {
	rk := rootlesskitInfo{prereq: prereq{required: true, Result: Result{Name: "rootlesskit"}}}
	path, err := e.lookPath("rootlesskit")
	if err != nil {
		rk.Detail, rk.Fix = "rootlesskit is not on PATH", "sudo apt-get install -y rootlesskit"
		return rk
	}
	rk.path, rk.OK, rk.Detail = path, true, path
	if e.versions {
		e.rootlesskitVersion(&rk)
	}
	return rk
}

func (e *prereqEnv) rootlesskitVersion(rk *rootlesskitInfo) {
	if rk.path == "" || rk.version != "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, rk.path, "--version").Output()
	if err != nil {
		rk.OK, rk.Detail, rk.Fix = false, rk.path+" --version failed: "+err.Error(), "sudo apt-get install --reinstall -y rootlesskit"
		return
	}
	m := rootlesskitVersion.FindStringSubmatch(string(out))
	if m == nil {
		rk.Detail = fmt.Sprintf("%s (version not understood: %q)", rk.path, strings.TrimSpace(string(out)))
		return
	}
	rk.version = m[1] + "." + m[2] + "." + m[3]
	rk.major, _ = strconv.Atoi(m[1])
	rk.Detail = rk.version + " (" + rk.path + ")"
	if rk.major >= 2 {
		rk.Detail += "; has --net=pasta"
	} else {
		rk.Detail += "; no --net=pasta (that needs rootlesskit >= 2): slirp4netns is the network driver"
	}
}

// netCheck: rootlesskit gives the namespace egress through slirp4netns; pasta can stand in
// only with rootlesskit 2 or later.
func (e *prereqEnv) netCheck(rk rootlesskitInfo) prereq {
	p := prereq{required: true, Result: Result{Name: "slirp4netns"}}
	if path, err := e.lookPath("slirp4netns"); err == nil {
		p.OK, p.Detail = true, path
		return p
	}
	p.Detail, p.Fix = "slirp4netns is not on PATH: rootlesskit has no network driver for egress", "sudo apt-get install -y slirp4netns"
	if pasta, err := e.lookPath("pasta"); err == nil {
		e.rootlesskitVersion(&rk) // unavoidable: only the version says whether pasta can be used
		if rk.major >= 2 {
			p.OK, p.Fix = true, ""
			p.Detail = "slirp4netns is missing; pasta (" + pasta + ") with rootlesskit " + rk.version + " (--net=pasta)"
			return p
		}
		p.Detail += "; pasta (" + pasta + ") is there, but rootlesskit " + rk.version + " cannot drive it (needs >= 2)"
	}
	return p
}

// tunCheck opens /dev/net/tun as this process: slirp4netns and pasta make their tap device
// through it. Opening without TUNSETIFF creates nothing.
func (e *prereqEnv) tunCheck() prereq {
	p := prereq{required: true, Result: Result{Name: e.tun}}
	f, err := os.OpenFile(e.tun, os.O_RDWR, 0)
	if err == nil {
		f.Close()
		p.OK, p.Detail = true, "opened read-write"
		return p
	}
	mode := ""
	if st, err := os.Stat(e.tun); err == nil {
		mode = fmt.Sprintf(" (mode %#o", st.Mode().Perm())
		if n, err := unix.Getxattr(e.tun, "system.posix_acl_access", nil); err == nil && n > 0 {
			mode += " with an ACL that leaves you out"
		}
		mode += ")"
	}
	switch {
	case errors.Is(err, fs.ErrPermission):
		p.Detail = fmt.Sprintf("%v%s: slirp4netns cannot make its tap device. For every user at once (Debian's udev default, which `make setup` applies): sudo chmod 0666 %s", err, mode, e.tun)
		p.Fix = fmt.Sprintf("sudo setfacl -m u:%s:rw %s", e.userName(), e.tun)
		if _, lerr := e.lookPath("setfacl"); lerr != nil {
			p.Fix = "sudo apt-get install -y acl && " + p.Fix
		}
	case errors.Is(err, fs.ErrNotExist):
		p.Detail = err.Error()
		p.Fix = fmt.Sprintf("sudo modprobe tun; sudo mkdir -p %s && sudo mknod %s c 10 200 && sudo chmod 0666 %s", filepath.Dir(e.tun), e.tun, e.tun)
	default:
		p.Detail, p.Fix = err.Error(), "sudo modprobe tun"
	}
	return p
}

// homeCheck: every piece of rootless state (containerd's root and socket, rootlesskit's state)
// lives under moatc's home, so the user must be able to write there.
func (e *prereqEnv) homeCheck() prereq {
	p := prereq{required: true, Result: Result{Name: "moatc home"}}
	dir := e.home
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	st, err := os.Stat(dir)
	if err == nil && !st.IsDir() {
		p.Detail, p.Fix = dir+" is not a directory", "export MOATC_HOME=$HOME/.moatc"
		return p
	}
	if err == nil {
		err = unix.Access(dir, unix.W_OK|unix.X_OK)
	}
	if err != nil {
		p.Detail = fmt.Sprintf("cannot write in %s: %v", dir, err)
		var sys *syscall.Stat_t
		if st != nil {
			sys, _ = st.Sys().(*syscall.Stat_t)
		}
		switch {
		case errors.Is(err, unix.EROFS):
			p.Fix = "export MOATC_HOME=DIR (a directory of yours on a writable local disk)"
		case dir == e.home && sys != nil && int(sys.Uid) != e.uid:
			p.Fix = fmt.Sprintf("sudo chown -R %s: %s", e.userName(), e.home)
		default:
			p.Fix = fmt.Sprintf("sudo mkdir -p %s && sudo chown %s: %s", e.home, e.userName(), e.home)
		}
		return p
	}
	p.OK, p.Detail = true, e.home
	if dir != e.home {
		p.Detail += " (not made yet; " + dir + " is writable)"
	}
	var sfs unix.Statfs_t
	if unix.Statfs(dir, &sfs) == nil && (sfs.Type == unix.NFS_SUPER_MAGIC || sfs.Type == unix.SMB_SUPER_MAGIC || sfs.Type == 0xFE534D42 /* SMB2 */) {
		p.Detail += "; a network filesystem: containerd's overlayfs snapshots may not work there, set MOATC_HOME to a local disk"
	}
	return p
}

// socketsCheck says which containerd moatc uses when others are around. Informational.
func (e *prereqEnv) socketsCheck() prereq {
	p := prereq{Result: Result{Name: "containerd sockets", OK: true}}
	own := filepath.Join(e.home, "containerd")
	if e.uid == 0 {
		p.Detail = "moatc uses its managed containerd under " + own + " unless --address names another"
		return p
	}
	var seen []string
	if _, err := os.Stat(e.rootful); err == nil {
		seen = append(seen, "a rootful containerd's socket is at "+e.rootful+", but a non-root user cannot use it (root owns it, and its containers would be root's)")
	} else if errors.Is(err, fs.ErrPermission) {
		seen = append(seen, filepath.Dir(e.rootful)+" is root's and closed to you (a rootful containerd may run there; a non-root user cannot use it)")
	}
	mine := filepath.Join(e.runtimeDir, "containerd", "containerd.sock")
	if _, err := os.Stat(mine); err == nil {
		seen = append(seen, "your own rootless containerd (nerdctl's layout) is at "+mine+"; moatc leaves it alone, pass --address "+mine+" to use it")
	}
	seen = append(seen, "moatc uses its own rootless containerd under "+own+" (started by `moatc system start`) unless --address names another")
	p.Detail = strings.Join(seen, "; ")
	return p
}

// overflowUID is the uid the kernel shows for an id the user namespace does not map.
func overflowUID() uint32 {
	b, err := os.ReadFile("/proc/sys/kernel/overflowuid")
	if err != nil {
		return 65534
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 65534
	}
	return uint32(n)
}
