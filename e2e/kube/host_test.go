package kube

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/mounts"
)

// What the cluster does to the host outside its directory, and how this file undoes it:
//   - the kubelet writes /var/lib/kubelet (device-plugins, whatever --root-dir says) and
//     /var/log/containers (links to pod logs) however configured: removed;
//   - libcni (inside containerd's CRI) caches results under /var/lib/cni: our network's
//     entries are removed (moatc keeps its CNI cache elsewhere, see cni/plugins.go);
//   - the kubelet makes kubepods cgroups in every hierarchy, and sets kernel sysctls it wants
//     (it has no flag to only check them without failing): cgroups removed, sysctls restored;
//   - moatc's gVisor shim leaves its socket in /run/containerd/s; a sandbox killed without CNI
//     DEL leaves libcni's loopback cache entry: both found by container id and removed;
//   - the pod bridge mkube0: deleted. Network namespaces live under the cluster's directory
//     and the bridge plugin runs without ipMasq or isGateway, so no iptables rule, no
//     /run/netns entry and no ip_forward change is expected; leaks() checks that.
// A test binary that dies without its teardown leaves all that behind: the next start finds
// it by the directory's host.json, whose owner is gone, and cleans up first (sweepStale).

const dirPrefix = "mkube-" // the cluster's directory is /tmp/mkube-*

// hostPaths are the host directories the kubelet or libcni may make.
var hostPaths = []string{"/var/lib/kubelet", "/var/lib/cni", "/var/log/containers", "/var/log/pods"}

// emptyDirs are removed at the end when they did not exist before and are empty: the
// kubelet's and libcni's, and containerd's host-wide one for shim sockets and FIFOs (which
// moatc's own containerd uses too, and makes again when it needs it).
var emptyDirs = []string{"/var/lib/cni/results", "/var/lib/cni/networks", "/var/lib/cni", "/var/log/containers",
	"/var/log/pods", shimSocketDir, "/run/containerd/fifo", "/run/containerd"}

// kubeletSysctls are the sysctls the kubelet sets at start (setupKernelTunables), under /proc/sys.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// hostState is the host as it was before the cluster started, kept in DIR/host.json.
type hostState struct {
	PID     int               `json:"pid"`
	Start   string            `json:"start"` // the owner's start time: pids are reused
	Sysctls map[string]string `json:"sysctls"`
	Netns   []string          `json:"netns"` // entries of /run/netns
	Existed map[string]bool   `json:"existed"`
}

// checkPrerequisites says what is missing for a cluster on this host, with the fix.
func checkPrerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("the cluster needs root")
	}
	var missing []string
	for _, f := range []string{kubeBin("kube-apiserver"), kubeBin("kubelet"), kubeBin("kube-scheduler"), kubeBin("kube-controller-manager"), kubeBin("kube-router"), "/usr/sbin/ipset", kubeBin("pause"),
		prefixBin("containerd"), prefixBin("ctr"), prefixBin("containerd-shim-runc-v2"), prefixBin("runc"),
		prefixBin("runsc"), prefixBin("containerd-shim-runsc-v1"), etcdBin,
		filepath.Join(cniBinDir, "bridge"), filepath.Join(cniBinDir, "host-local"), filepath.Join(cniBinDir, "loopback"),
		"/bin/busybox"} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run `make setup` and `bash scripts/kube-setup.sh` (PREFIX=%s)", strings.Join(missing, ", "), prefix)
	}
	if pid := foreignKubelet(); pid != 0 {
		return fmt.Errorf("a kubelet these tests did not start is running (pid %d): the cluster needs the host's kubepods cgroups and /var/lib/kubelet to itself", pid)
	}
	return nil
}

// foreignKubelet returns the pid of a kubelet that is not one of ours (whose command line
// names a cluster directory), or 0.
func foreignKubelet() int {
	for _, pid := range allPids() {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "kubelet" {
			continue
		}
		if !strings.Contains(cmdline(pid), "/tmp/"+dirPrefix) {
			return pid
		}
	}
	return 0
}

// recordHost writes host.json before anything on the host changes.
func (c *cluster) recordHost() error {
	hs := &hostState{PID: os.Getpid(), Start: procStart(os.Getpid()), Sysctls: map[string]string{}, Existed: map[string]bool{}}
	for _, k := range kubeletSysctls {
		v, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			return fmt.Errorf("reading sysctl %s: %w", k, err)
		}
		hs.Sysctls[k] = strings.TrimSpace(string(v))
	}
	hs.Netns = cniNetns()
	for _, p := range append(hostPaths, emptyDirs...) {
		_, err := os.Lstat(p)
		hs.Existed[p] = err == nil
	}
	c.host = hs
	b, err := json.MarshalIndent(hs, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(c.path("host.json"), b, 0o644)
}

func readHostState(dir string) *hostState {
	b, err := os.ReadFile(filepath.Join(dir, "host.json"))
	if err != nil {
		return nil
	}
	var hs hostState
	if json.Unmarshal(b, &hs) != nil {
		return nil
	}
	return &hs
}

func (hs *hostState) ownerAlive() bool {
	return hs.PID > 0 && procStart(hs.PID) == hs.Start
}

// sweepStale cleans up after earlier runs that died without their teardown.
func sweepStale() error {
	dirs, _ := filepath.Glob("/tmp/" + dirPrefix + "*")
	for _, d := range dirs {
		hs := readHostState(d)
		if hs != nil && hs.ownerAlive() {
			return fmt.Errorf("another test process (pid %d) runs a cluster in %s", hs.PID, d)
		}
		if err := cleanHost(d, hs, false); err != nil {
			return fmt.Errorf("cleaning up after an earlier run (%s): %w", d, err)
		}
	}
	// A run that died before it made its directory, or whose directory someone removed.
	if err := cleanHost("", nil, false); err != nil {
		return fmt.Errorf("cleaning up after an earlier run: %w", err)
	}
	return nil
}

// cleanHost undoes what the cluster in dir did to the host, whether or not its daemons were
// stopped first: kills what is left of it, unmounts, removes. dir "" cleans only what is
// outside any directory. keepLogs keeps DIR/logs (and so DIR) for a failed run.
func cleanHost(dir string, hs *hostState, keepLogs bool) error {
	var errs []error
	if err := killAll(leftoverPids(dir)); err != nil {
		errs = append(errs, err)
	}
	if err := cleanKubeRouter(); err != nil {
		errs = append(errs, err)
	}
	for _, root := range []string{dir, "/var/lib/kubelet"} {
		if err := unmountUnder(root); err != nil {
			errs = append(errs, err)
		}
	}
	for _, cg := range kubepodsCgroups() {
		if err := removeCgroupTree(cg); err != nil {
			errs = append(errs, err)
		}
	}
	if link, err := netlink.LinkByName(bridgeName); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			errs = append(errs, fmt.Errorf("deleting bridge %s: %w", bridgeName, err))
		}
	}
	if err := removeNetns(hs); err != nil {
		errs = append(errs, err)
	}
	if err := removeContainerFiles(dir); err != nil {
		errs = append(errs, err)
	}
	if err := cleanHostPaths(dir, hs); err != nil {
		errs = append(errs, err)
	}
	if hs != nil {
		for k, v := range hs.Sysctls {
			if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
				errs = append(errs, fmt.Errorf("restoring sysctl %s: %w", k, err))
			}
		}
	}
	if dir != "" {
		if err := removeDir(dir, keepLogs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// leftoverPids are the processes of a cluster: every one in a kubepods cgroup (containers,
// gVisor sandboxes) and every one whose command line names dir (daemons, shims, runsc).
func leftoverPids(dir string) []int {
	var pids []int
	for _, cg := range kubepodsCgroups() {
		pids = append(pids, cgroupPids(cg)...)
	}
	if dir != "" {
		pids = append(pids, procsMentioning(dir+"/")...)
	}
	slices.Sort(pids)
	return slices.Compact(pids)
}

// killAll SIGKILLs pids and waits until they are gone (or zombies, which hold nothing).
func killAll(pids []int) error {
	for _, pid := range pids {
		if pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for _, pid := range pids {
		for procAlive(pid) {
			if time.Now().After(deadline) {
				return fmt.Errorf("process %d (%s) survived SIGKILL", pid, cmdline(pid))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// unmountUnder detaches every mount at or below root, deepest first.
func unmountUnder(root string) error {
	if root == "" {
		return nil
	}
	var errs []error
	for _, m := range mountsUnder(root) {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
		}
	}
	return errors.Join(errs...)
}

// mountsUnder returns the mount points at or below root, deepest first.
func mountsUnder(root string) []string {
	var out []string
	for _, m := range mountInfo() {
		if m.point == root || strings.HasPrefix(m.point, root+"/") {
			out = append(out, m.point)
		}
	}
	slices.Reverse(out) // mountinfo lists parents before children
	return out
}

type mount struct{ point, fstype string }

func mountInfo() []mount {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []mount
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mount{point: mounts.Unescape(fields[4]), fstype: fields[sep+1]})
	}
	return out
}

// kubepodsCgroups returns the kubelet's kubepods cgroup in each hierarchy where it exists.
func kubepodsCgroups() []string {
	var out []string
	for _, m := range mountInfo() {
		if m.fstype != "cgroup" && m.fstype != "cgroup2" {
			continue
		}
		if p := filepath.Join(m.point, "kubepods"); isDir(p) {
			out = append(out, p)
		}
	}
	return out
}

// cgroupPids returns the processes anywhere in the cgroup tree at root.
func cgroupPids(root string) []int {
	var pids []int
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// removeCgroupTree removes the cgroup at root and its children, deepest first. A cgroup
// whose last process just died can stay busy for a moment, hence the retries.
func removeCgroupTree(root string) error {
	var dirs []string
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		var err error
		for range 50 {
			if err = unix.Rmdir(d); err == nil || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("removing cgroup %s: %w", d, err)
		}
	}
	return nil
}

// cniNetns returns the cni-* entries of /run/netns (the CRI's names).
func cniNetns() []string {
	matches, _ := filepath.Glob("/run/netns/cni-*")
	return matches
}

// removeNetns removes cni-* network namespaces made since the start. None are expected
// (they live under the state directory); moatc's own are named moatc-*.
func removeNetns(hs *hostState) error {
	if hs == nil {
		return nil
	}
	var errs []error
	for _, ns := range cniNetns() {
		if slices.Contains(hs.Netns, ns) {
			continue
		}
		unix.Unmount(ns, unix.MNT_DETACH)
		if err := os.Remove(ns); err != nil {
			errs = append(errs, fmt.Errorf("removing netns %s: %w", ns, err))
		}
	}
	return errors.Join(errs...)
}

// removeContainerFiles removes what the cluster's containers left outside its directory
// (see recordContainers): dead shim sockets (the shims were stopped or killed first) and
// libcni's loopback cache entries.
func removeContainerFiles(dir string) error {
	if dir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "containers"))
	if err != nil {
		return nil
	}
	var errs []error
	for _, id := range strings.Fields(string(b)) {
		for _, f := range []string{shimSocket(filepath.Join(dir, "c.sock"), id), "/var/lib/cni/results/cni-loopback-" + id + "-lo"} {
			if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cleanHostPaths removes what the kubelet and libcni wrote outside the cluster's directory.
func cleanHostPaths(dir string, hs *hostState) error {
	existed := func(p string) bool { return hs != nil && hs.Existed[p] }
	var errs []error
	if !existed("/var/lib/kubelet") {
		if err := os.RemoveAll("/var/lib/kubelet"); err != nil {
			errs = append(errs, err)
		}
	}
	// Pod log links: only those into this cluster's directory (any cluster's, for dir "").
	into := dir + "/"
	if dir == "" {
		into = "/tmp/" + dirPrefix
	}
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		if target, err := os.Readlink(l); err == nil && strings.HasPrefix(target, into) {
			os.Remove(l)
		}
	}
	// libcni's cache: only our network's entries.
	cache, _ := filepath.Glob("/var/lib/cni/results/" + cniNetwork + "-*")
	cache = append(cache, "/var/lib/cni/networks/"+cniNetwork)
	for _, p := range cache {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range emptyDirs {
		if !existed(p) {
			os.Remove(p) // only when empty: someone else's files stay
		}
	}
	return errors.Join(errs...)
}

// removeDir removes the cluster's directory, or all of it but its logs.
func removeDir(dir string, keepLogs bool) error {
	if !keepLogs {
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("removing %s: %w", dir, err)
		}
		return nil
	}
	entries, _ := os.ReadDir(dir)
	var errs []error
	for _, e := range entries {
		if e.Name() != "logs" {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// leaks lists what cleanHost should have removed and did not.
func leaks(dir string, hs *hostState, keepLogs bool) []string {
	var out []string
	for _, root := range []string{dir, "/var/lib/kubelet"} {
		for _, m := range mountsUnder(root) {
			out = append(out, "mount "+m)
		}
	}
	if _, err := netlink.LinkByName(bridgeName); err == nil {
		out = append(out, "bridge "+bridgeName)
	}
	for _, ns := range cniNetns() {
		if hs == nil || !slices.Contains(hs.Netns, ns) {
			out = append(out, "netns "+ns)
		}
	}
	for _, cg := range kubepodsCgroups() {
		out = append(out, "cgroup "+cg)
	}
	for _, pid := range leftoverPids(dir) {
		out = append(out, fmt.Sprintf("process %d (%s)", pid, cmdline(pid)))
	}
	for _, p := range hostPaths {
		if _, err := os.Lstat(p); err == nil && (hs == nil || !hs.Existed[p]) {
			out = append(out, "directory "+p)
		}
	}
	if m, _ := filepath.Glob("/var/lib/cni/results/" + cniNetwork + "-*"); len(m) > 0 {
		out = append(out, "libcni cache "+strings.Join(m, " "))
	}
	out = append(out, iptablesLeaks()...)
	out = append(out, kubeRouterLeft()...)
	if hs != nil {
		for k, v := range hs.Sysctls {
			if now, _ := os.ReadFile("/proc/sys/" + k); strings.TrimSpace(string(now)) != v {
				out = append(out, fmt.Sprintf("sysctl %s=%s (was %s)", k, strings.TrimSpace(string(now)), v))
			}
		}
	}
	if _, err := os.Stat(dir); err == nil && !keepLogs {
		out = append(out, "directory "+dir)
	}
	return out
}

// iptablesLeaks returns iptables rules that mention the pod bridge or subnet.
func iptablesLeaks() []string {
	out, err := exec.Command("iptables-save").Output()
	if err != nil {
		return nil // no iptables: nothing can have been added either
	}
	subnet := strings.TrimSuffix(podSubnet, "0/24") // "10.244.7."
	var found []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, bridgeName) || strings.Contains(l, subnet) {
			found = append(found, "iptables "+l)
		}
	}
	return found
}

func allPids() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procsMentioning returns the processes whose command line contains s, except this one.
func procsMentioning(s string) []int {
	var pids []int
	for _, pid := range allPids() {
		if pid != os.Getpid() && strings.Contains(cmdline(pid), s) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// procStat returns the fields of /proc/PID/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// procStart is the process's start time in clock ticks since boot (field 22), "" if gone.
func procStart(pid int) string {
	if f := procStat(pid); len(f) > 19 {
		return f[19]
	}
	return ""
}

// procAlive: the process exists and is not a zombie.
func procAlive(pid int) bool {
	f := procStat(pid)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}
