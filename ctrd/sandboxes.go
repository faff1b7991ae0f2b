package ctrd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/mounts"
)

// A gVisor sandbox outlives what containerd knows of it when the client dies during task
// create: containerd gives up on the request (its clean-up of the shim times out while the
// shim is busy in `runsc create`), drops the task and removes the bundle, so the dead-shim
// clean-up that would run `runsc delete` cannot even start. The shim then finishes creating
// the sandbox for nobody; the shim exits or lingers, and the sandbox and its gofer are left
// running. Nothing in containerd points at them any more: they are found here, on the host,
// by what moatc made them with (its runsc state root, its containerd's address), and
// removed without containerd. (A client that dies after task create but before start leaves
// a task containerd does know, in state created: RemoveContainer handles that one.)

// SandboxScope says what belongs to one moatc home.
type SandboxScope struct {
	Runsc     string // the runsc binary, for `runsc delete`
	Root      string // the home's runsc root (GVisor.StateRoot); the namespace is below it
	Namespace string // the containerd namespace the home works in
	// Address is the containerd whose shims are looked at. Managed says it is the home's
	// own daemon: every shim serving it then belongs to the home. On a shared containerd a
	// shim is the home's only when its sandbox uses the home's runsc root.
	Address string
	Managed bool
	// TaskDir is where that containerd keeps the task bundles of Namespace, when known (the
	// managed daemon). It recognises the home's sandboxes in runsc's shared default root,
	// where moatc kept them before it had a root per home.
	TaskDir string
}

// RunscPath is the runsc binary the runtime uses; "" when it is missing.
func (g GVisor) RunscPath() string {
	p, _ := findBinary(g.Prefix, "runsc")
	return p
}

// LegacyRunscRoot is runsc's default root, shared by every user of the stock shim; moatc's
// runs used it before their state had a root per home.
const LegacyRunscRoot = "/run/containerd/runsc"

// shimBinaries are the shims moatc's runtimes use: gVisor's, and runc's (an idle runc shim
// is left the same way, by a moatc killed while its probe or run was being created).
var shimBinaries = map[string]bool{"containerd-shim-runsc-v1": true, "containerd-shim-runc-v2": true}

// HostSandbox is one container of a home as found on the host: its shim (gVisor's, or for
// a runc container runc's), its runsc processes (the sandbox, its gofer, runsc commands on
// it), its runsc state.
type HostSandbox struct {
	ID     string // the container id, e.g. moatc-0123456789ab
	Root   string // the runsc root its processes and state use (namespace included)
	Legacy bool   // under runsc's shared default root (LegacyRunscRoot)
	// Proven: it certainly belongs to the home (its runsc root, or a shim of the home's own
	// containerd). An unproven one is a shim on a shared containerd with a moatc-like id.
	Proven bool
	// InRoot: runsc state or processes of it were found under the home's runsc root (or,
	// legacy, under the shared root with a bundle of the home's containerd).
	InRoot     bool
	Shims      []int    // pids of its long-lived shims
	Procs      []int    // pids of its runsc processes
	StateFiles []string // its entries in Root
	Cgroups    string   // its cgroups path, from runsc's state; "" if unknown
	Bundle     string   // containerd's bundle directory for it, when known
	// Youngest is how long ago its most recent process started (by the boot clock, which
	// the wall clock's jumps do not move); 0 when it has none.
	Youngest time.Duration
}

// Empty says nothing of the sandbox is left.
func (s *HostSandbox) Empty() bool {
	return len(s.Shims) == 0 && len(s.Procs) == 0 && len(s.StateFiles) == 0
}

func (s *HostSandbox) String() string {
	var parts []string
	if n := len(s.Shims); n > 0 {
		parts = append(parts, plural(n, "shim"))
	}
	if n := len(s.Procs); n > 0 {
		parts = append(parts, plural(n, "runsc process"))
	}
	if len(s.StateFiles) > 0 {
		parts = append(parts, "runsc state")
	}
	if len(parts) == 0 {
		return s.ID
	}
	return s.ID + " (" + strings.Join(parts, ", ") + ")"
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	if strings.HasSuffix(what, "s") {
		return fmt.Sprintf("%d %ses", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func (sc SandboxScope) root() string { return filepath.Join(sc.Root, sc.Namespace) }

func (sc SandboxScope) legacyRoot() string { return filepath.Join(LegacyRunscRoot, sc.Namespace) }

// FindSandboxes lists the home's sandboxes on the host, by container id, whatever their
// run: the caller decides which are still wanted. A process list read once; runsc state read
// from the home's root and, for the managed daemon, the home's entries in the shared root.
func FindSandboxes(sc SandboxScope) (map[string]*HostSandbox, error) {
	if sc.Root == "" || sc.Namespace == "" {
		return nil, fmt.Errorf("finding sandboxes: no runsc root or namespace")
	}
	ss := &sandboxSet{sc: sc, found: map[string]*HostSandbox{}}
	// State first: a legacy entry is the home's when its bundle is the home's.
	if err := ss.readState(); err != nil {
		return nil, err
	}
	if err := ss.readProcs(); err != nil {
		return nil, err
	}
	for _, s := range ss.found {
		for _, pid := range append(append([]int(nil), s.Shims...), s.Procs...) {
			if age, ok := processAge(pid); ok && (s.Youngest == 0 || age < s.Youngest) {
				s.Youngest = age
			}
		}
		sort.Ints(s.Shims)
		sort.Ints(s.Procs)
		sort.Strings(s.StateFiles)
	}
	return ss.found, nil
}

// sandboxSet gathers what FindSandboxes finds, by container id.
type sandboxSet struct {
	sc    SandboxScope
	found map[string]*HostSandbox
}

func (ss *sandboxSet) get(id, root string) *HostSandbox {
	s := ss.found[id]
	if s == nil {
		s = &HostSandbox{ID: id, Root: root, Legacy: root == ss.sc.legacyRoot()}
		if ss.sc.TaskDir != "" {
			s.Bundle = filepath.Join(ss.sc.TaskDir, id)
		}
		ss.found[id] = s
	}
	return s
}

// readState reads runsc's state files: the home's root, and the home's entries in the shared
// legacy root.
func (ss *sandboxSet) readState() error {
	sc := ss.sc
	if err := readStateDir(sc.root(), func(id, file string, st *runscState) {
		s := ss.get(id, sc.root())
		s.Proven, s.InRoot = true, true
		s.StateFiles = append(s.StateFiles, file)
		if st != nil && st.Spec.Linux.CgroupsPath != "" {
			s.Cgroups = st.Spec.Linux.CgroupsPath
		}
	}); err != nil {
		return err
	}
	if sc.TaskDir == "" {
		return nil
	}
	legacy := map[string][]string{}
	mine := map[string]*runscState{}
	if err := readStateDir(sc.legacyRoot(), func(id, file string, st *runscState) {
		legacy[id] = append(legacy[id], file)
		if st != nil && under(sc.TaskDir, st.BundleDir) {
			mine[id] = st
		}
	}); err != nil {
		return err
	}
	for id, st := range mine {
		s := ss.get(id, sc.legacyRoot())
		s.Proven, s.InRoot = true, true
		s.StateFiles = append(s.StateFiles, legacy[id]...)
		s.Cgroups = st.Spec.Linux.CgroupsPath
	}
	return nil
}

// readProcs adds the shims and runsc processes of the process list, read once.
func (ss *sandboxSet) readProcs() error {
	sc := ss.sc
	procs, err := listProcs()
	if err != nil {
		return err
	}
	shimOf := map[int]*HostSandbox{}
	for _, p := range procs {
		if id, ok := sc.isShim(p.argv); ok {
			s := ss.get(id, sc.root())
			s.Shims = append(s.Shims, p.pid)
			s.Proven = s.Proven || sc.Managed || sc.shimUsesRoot(p.pid)
			shimOf[p.pid] = s
		}
	}
	for _, p := range procs {
		id, root, ok := sc.isRunsc(p.argv)
		if !ok {
			continue
		}
		s := ss.get(id, root)
		if !s.InRoot { // first seen as a shim: its sandbox says which root
			s.Root, s.Legacy = root, root == sc.legacyRoot()
		}
		s.Procs = append(s.Procs, p.pid)
		s.Proven, s.InRoot = true, true
		if sh := shimOf[p.ppid]; sh != nil {
			sh.Proven = true
		}
	}
	return nil
}

// runscState is what moatc reads of a runsc state file.
type runscState struct {
	BundleDir string `json:"bundleDir"`
	Spec      struct {
		Linux struct {
			CgroupsPath string `json:"cgroupsPath"`
		} `json:"linux"`
	} `json:"spec"`
}

// readStateDir calls fn for each runsc entry in root: "SANDBOX_sandbox:CONTAINER.state"
// (with the parsed state) and ".lock", and "runsc-SANDBOX.sock". A missing root is empty.
func readStateDir(root string, fn func(id, file string, st *runscState)) error {
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading runsc's state: %w", err)
	}
	// The state files first, so an entry's lock and socket follow it.
	sort.SliceStable(ents, func(i, j int) bool {
		return strings.HasSuffix(ents[i].Name(), ".state") && !strings.HasSuffix(ents[j].Name(), ".state")
	})
	for _, e := range ents {
		name := e.Name()
		var id string
		switch {
		case strings.HasPrefix(name, "runsc-") && strings.HasSuffix(name, ".sock"):
			id = strings.TrimSuffix(strings.TrimPrefix(name, "runsc-"), ".sock")
		case strings.Contains(name, "_sandbox:"):
			id, _, _ = strings.Cut(name, "_sandbox:")
		default:
			continue
		}
		var st *runscState
		if strings.HasSuffix(name, ".state") {
			if b, err := os.ReadFile(filepath.Join(root, name)); err == nil {
				var s runscState
				if json.Unmarshal(b, &s) == nil {
					st = &s
				}
			}
		}
		fn(id, name, st)
	}
	return nil
}

// isShim says whether argv is a long-lived shim (gVisor's or runc's) serving the scope's
// containerd and namespace, and for which container.
func (sc SandboxScope) isShim(argv []string) (string, bool) {
	if len(argv) == 0 || !shimBinaries[filepath.Base(argv[0])] {
		return "", false
	}
	var ns, addr, id string
	for i := 1; i < len(argv); i++ {
		a := strings.TrimLeft(argv[i], "-")
		if !strings.HasPrefix(argv[i], "-") {
			return "", false // `start` or `delete`: containerd's short-lived commands
		}
		key, val, hasVal := strings.Cut(a, "=")
		if !hasVal && key != "debug" && i+1 < len(argv) {
			i++
			val = argv[i]
		}
		switch key {
		case "namespace":
			ns = val
		case "address":
			addr = val
		case "id":
			id = val
		}
	}
	if id == "" || ns != sc.Namespace || filepath.Clean(addr) != filepath.Clean(sc.Address) {
		return "", false
	}
	return id, true
}

// shimUsesRoot reads the runsc root the shim's bundle records (its working directory).
func (sc SandboxScope) shimUsesRoot(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cwd/state.json", pid))
	if err != nil {
		return false
	}
	var st struct {
		Options struct {
			Root string `json:"root"`
		} `json:"options"`
	}
	return json.Unmarshal(b, &st) == nil && st.Options.Root != "" && filepath.Clean(st.Options.Root) == filepath.Clean(sc.Root)
}

// isRunsc says whether argv is a runsc process (sandbox, gofer, or a runsc command) on one
// of the home's sandboxes: the home's root, or the shared root with a bundle of the home's
// containerd. runsc puts the container id last.
func (sc SandboxScope) isRunsc(argv []string) (id, root string, ok bool) {
	if len(argv) < 2 {
		return "", "", false
	}
	var bundle string
	for i, a := range argv[1:] {
		switch {
		case strings.HasPrefix(a, "--root="):
			root = strings.TrimPrefix(a, "--root=")
		case a == "--root" && i+2 < len(argv):
			root = argv[i+2]
		case strings.HasPrefix(a, "--bundle="):
			bundle = strings.TrimPrefix(a, "--bundle=")
		case a == "--bundle" && i+2 < len(argv):
			bundle = argv[i+2]
		case strings.HasPrefix(a, "--log="):
			if bundle == "" {
				bundle = filepath.Dir(strings.TrimPrefix(a, "--log="))
			}
		}
	}
	if root == "" {
		return "", "", false
	}
	root = filepath.Clean(root)
	switch {
	case root == sc.root():
	case root == sc.legacyRoot() && sc.TaskDir != "" && under(sc.TaskDir, bundle):
	default:
		return "", "", false
	}
	id = argv[len(argv)-1]
	if id == "" || strings.HasPrefix(id, "-") {
		return "", "", false
	}
	for _, a := range argv {
		if a == "delete" {
			return "", "", false // a `runsc delete` under way: let it finish
		}
	}
	return id, root, true
}

// under says whether path is dir or inside it.
func under(dir, path string) bool {
	if dir == "" || path == "" {
		return false
	}
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

type proc struct {
	pid, ppid int
	argv      []string
}

// listProcs reads every process's command line (zombies and kernel threads have none).
func listProcs() ([]proc, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	self := os.Getpid()
	var out []proc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		argv := cmdline(pid)
		if len(argv) == 0 {
			continue
		}
		out = append(out, proc{pid: pid, ppid: ppidOf(pid), argv: argv})
	}
	return out, nil
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

// statOf returns a process's state letter and parent; "" when it is gone.
func statOf(pid int) (string, int) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0
	}
	// Fields after the command name, which may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return "", 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return f[0], ppid
}

// processAge is how long ago pid started, from its start time in clock ticks since boot
// (USER_HZ, 100 on Linux) and the system's uptime.
func processAge(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64) // field 22: starttime
	if err != nil {
		return 0, false
	}
	u, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, false
	}
	up, err := strconv.ParseFloat(strings.Fields(string(u))[0], 64)
	if err != nil {
		return 0, false
	}
	age := time.Duration(up*float64(time.Second)) - time.Duration(ticks)*time.Second/100
	if age < time.Millisecond {
		age = time.Millisecond
	}
	return age, true
}

func ppidOf(pid int) int { _, p := statOf(pid); return p }

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	st, _ := statOf(pid)
	return st != "" && st != "Z" && st != "X"
}

// killIf sends SIGKILL to pid if its command line still satisfies is, and says whether it
// did. Through a pidfd, so a pid reused between the check and the signal is never hit.
func killIf(pid int, is func(argv []string) bool) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ENOSYS) && is(cmdline(pid)) {
			return unix.Kill(pid, unix.SIGKILL) == nil
		}
		return false
	}
	defer unix.Close(fd)
	return is(cmdline(pid)) && unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
}

// waitGone waits until none of pids is alive, up to d.
func waitGone(pids []int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		left := 0
		for _, p := range pids {
			if alive(p) {
				left++
			}
		}
		if left == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RemoveSandboxes removes the given sandboxes of the scope, several at once, and returns
// the ids of those removed and an error naming any that could not be.
func RemoveSandboxes(ctx context.Context, sc SandboxScope, sbs []*HostSandbox) ([]string, error) {
	var (
		mu      sync.Mutex
		removed []string
		errs    []error
		wg      sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	for _, s := range sbs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			err := RemoveSandbox(ctx, sc, s)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			removed = append(removed, s.ID)
		}()
	}
	wg.Wait()
	sort.Strings(removed)
	return removed, errors.Join(errs...)
}

// RemoveSandbox removes one sandbox of the scope that no run wants any more: its shims are
// killed first (so no `runsc create` of theirs goes on), then runsc deletes the sandbox
// (processes, cgroups, state); whatever runsc could not remove is killed and removed here.
func RemoveSandbox(ctx context.Context, sc SandboxScope, s *HostSandbox) error {
	root := s.Root
	if root == "" {
		root = sc.root()
	}
	for _, pid := range s.Shims {
		killIf(pid, func(argv []string) bool { id, ok := sc.isShim(argv); return ok && id == s.ID })
	}
	if !waitGone(s.Shims, 5*time.Second) {
		return fmt.Errorf("sandbox %s: its shim (pid %v) does not die", s.ID, s.Shims)
	}
	var runscErr error
	if len(s.StateFiles) > 0 && sc.Runsc != "" {
		// runsc kills the sandbox and gofer, removes its cgroups and state. It fails (after
		// doing all that) when the bundle containerd removed is gone: checked below instead.
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		out, err := exec.CommandContext(dctx, sc.Runsc, "--root", root, "delete", "--force", s.ID).CombinedOutput()
		cancel()
		if err != nil {
			runscErr = fmt.Errorf("runsc delete: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	// The sandbox, its gofer and any runsc command left; again until none is found, in case
	// a dying `runsc create` had just started one.
	is := func(argv []string) bool {
		id, r, ok := sc.isRunsc(argv)
		return ok && id == s.ID && r == root
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, err := listProcs()
		if err != nil {
			return err
		}
		var left []int
		for _, p := range procs {
			if is(p.argv) {
				killIf(p.pid, is)
				left = append(left, p.pid)
			}
		}
		if len(left) == 0 {
			break
		}
		waitGone(left, 2*time.Second)
		if time.Now().After(deadline) {
			return fmt.Errorf("sandbox %s: runsc processes %v do not die", s.ID, left)
		}
	}
	var errs []error
	if err := removeCgroups(cgroupsPath(s, sc.Namespace)); err != nil {
		errs = append(errs, err)
	}
	if err := readStateDir(root, func(id, file string, _ *runscState) {
		if id != s.ID {
			return
		}
		if err := os.Remove(filepath.Join(root, file)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}); err != nil {
		errs = append(errs, err)
	}
	if len(s.Shims) > 0 {
		removeShimSocket(sc.Address, sc.Namespace, s.ID)
	}
	if s.Bundle != "" {
		// A shim killed while containerd is down leaves its rootfs mounted in the bundle;
		// containerd removes the bundle itself when it next starts.
		unmountIfMounted(filepath.Join(s.Bundle, "rootfs"))
	}
	if len(errs) > 0 {
		if runscErr != nil {
			errs = append(errs, runscErr)
		}
		return fmt.Errorf("sandbox %s: %w", s.ID, errors.Join(errs...))
	}
	return nil
}

// cgroupsPath is the sandbox's cgroup below each hierarchy: from runsc's state, else
// containerd's default for the namespace.
func cgroupsPath(s *HostSandbox, ns string) string {
	p := s.Cgroups
	if p == "" || strings.Contains(p, ":") { // systemd's slice:prefix:name form: not moatc's
		p = "/" + ns + "/" + s.ID
	}
	return filepath.Clean("/" + p)
}

// removeCgroups removes the cgroup at path in every hierarchy (v1 controllers, the v2 tree),
// killing what is still in it first. Only leaf cgroups named after the container id are
// ever passed here.
func removeCgroups(path string) error {
	const base = "/sys/fs/cgroup"
	if path == "/" || !strings.Contains(strings.TrimPrefix(path, "/"), "/") {
		return nil // never a hierarchy's root or a namespace's parent
	}
	dirs := []string{filepath.Join(base, path)} // the v2 tree
	if ents, err := os.ReadDir(base); err == nil {
		for _, e := range ents {
			if e.IsDir() {
				dirs = append(dirs, filepath.Join(base, e.Name(), path))
			}
		}
	}
	var errs []error
	for _, d := range dirs {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		var err error
		for i := 0; i < 50; i++ {
			if b, rerr := os.ReadFile(filepath.Join(d, "cgroup.procs")); rerr == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, _ := strconv.Atoi(f); pid > 0 {
						unix.Kill(pid, unix.SIGKILL)
					}
				}
			}
			if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				err = nil
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// removeShimSocket removes a dead shim's socket: containerd names it by a hash of its own
// address, the namespace and the container id (its shim.SocketAddress).
func removeShimSocket(address, ns, id string) {
	for _, p := range []string{filepath.Join(address, ns, id), filepath.Join(address, ns, id, "debug")} {
		sum := sha256.Sum256([]byte(p))
		os.Remove(fmt.Sprintf("/run/containerd/s/%x", sum))
	}
}

// unmountIfMounted detaches a mount at path, if there is one.
func unmountIfMounted(path string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && mounts.Unescape(f[4]) == path {
			unix.Unmount(path, unix.MNT_DETACH)
			return
		}
	}
}

// UnmountUnder detaches every mount at or below dir (rootfs mounts a killed shim left in
// its bundle), deepest first.
func UnmountUnder(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("reading mounts: %w", err)
	}
	var mps []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && under(dir, mounts.Unescape(f[4])) {
			mps = append(mps, mounts.Unescape(f[4]))
		}
	}
	var errs []error
	for i := len(mps) - 1; i >= 0; i-- {
		if err := unix.Unmount(mps[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", mps[i], err))
		}
	}
	return errors.Join(errs...)
}

// PruneStateRoot removes the home's runsc root if no sandbox has anything in it: empty
// directories only (rmdir), so a sandbox's state is never touched. A home deleted after its
// daemons stopped then leaves nothing in /run.
func (g GVisor) PruneStateRoot() error {
	root := g.StateRoot()
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			os.Remove(filepath.Join(root, e.Name())) // the namespaces' directories, if empty
		}
	}
	if ents, err = os.ReadDir(root); err != nil || len(ents) != 1 || ents[0].Name() != runscOwnerFile {
		return nil
	}
	if err := os.Remove(filepath.Join(root, runscOwnerFile)); err != nil {
		return err
	}
	if err := os.Remove(root); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
