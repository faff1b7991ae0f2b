package run

import (
	"bytes"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/ctrd"
)

// Rootless, every process of moatc's stack lives in the user namespace of its rootlesskit
// (the kit): containerd, shims, supervisors, runc's containers, and, in namespaces nested in
// it, gVisor's sandboxes and gofers. When the kit ends, what is left of them cannot be
// reached through containerd any more; they are found here by their user namespace.

// hostUserNS is the inode of the host's (initial) user namespace: PROC_USER_INIT_INO.
const hostUserNS = 0xEFFFFFFD

// userNS names a user namespace by its inode; 0 is the host's.
type userNS uint64

func (n userNS) String() string { return fmt.Sprintf("user:[%d]", uint64(n)) }

// outerUserNS is the outermost user namespace of pid below the host's, as far as this process
// can see: the kit's for a process of a kit (or nested in one); 0 for a process of the host's.
// A namespace whose parent is out of this process's scope (a sibling kit's, seen from inside
// a kit) counts as outermost.
func outerUserNS(pid int) (userNS, error) {
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	for {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return 0, err
		}
		if st.Ino == hostUserNS {
			unix.Close(fd)
			return 0, nil
		}
		parent, err := unix.IoctlRetInt(fd, unix.NS_GET_PARENT)
		if err != nil {
			unix.Close(fd)
			return userNS(st.Ino), nil
		}
		var pst unix.Stat_t
		if unix.Fstat(parent, &pst) != nil || pst.Ino == hostUserNS {
			unix.Close(parent)
			unix.Close(fd)
			return userNS(st.Ino), nil
		}
		unix.Close(fd)
		fd = parent
	}
}

// nsProcess is a process found in a kit's namespaces.
type nsProcess struct {
	pid  int
	argv []string
}

// kitProcesses groups the processes this moatc can see by their outermost user namespace,
// leaving out the host's and this process.
func kitProcesses() map[userNS][]nsProcess {
	ents, _ := os.ReadDir("/proc")
	groups := map[userNS][]nsProcess{}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ns, err := outerUserNS(pid)
		if err != nil || ns == 0 {
			continue
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		groups[ns] = append(groups[ns], nsProcess{pid: pid, argv: strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")})
	}
	return groups
}

// homeMarks are the arguments by which moatc's processes of a home say whose they are.
type homeMarks struct {
	home    string
	address string // containerd's socket: the shims' -address
	runsc   string // the runsc state root: gVisor's --root=ROOT/...
}

func marksOf(home string) homeMarks {
	return homeMarks{home: home, address: filepath.Join(home, "containerd", "containerd.sock"),
		runsc: ctrd.GVisor{Dir: filepath.Join(home, "runsc")}.StateRoot() + "/"}
}

// names reports whether argv is one of home's processes: a shim of its containerd, its
// containerd or rootlesskit, a supervisor or shim logger of its runs, or runsc (sandbox,
// gofer) with its state root. Only moatc's own arguments count: a path of the home given to
// some other command (a mount of another home's run) does not.
func (hm homeMarks) names(argv []string) bool {
	for i, a := range argv {
		next := ""
		if i+1 < len(argv) {
			next = argv[i+1]
		}
		switch {
		case a == "-address" && next == hm.address,
			a == "--home" && next == hm.home,
			a == "--config" && next == filepath.Join(hm.home, "containerd", "config.toml"),
			a == "--state-dir="+filepath.Join(hm.home, "rootless"),
			strings.HasPrefix(a, "--root="+hm.runsc):
			return true
		case i == 1 && a == LogCommand:
			q, err := url.ParseQuery(next)
			if err == nil && strings.HasPrefix(q.Get("path"), filepath.Join(hm.home, "runs")+"/") {
				return true
			}
		}
	}
	return false
}

// staleKits are the user namespaces of this home's dead kits that still hold processes: those
// with one of home's processes (homeMarks.names) but no longer the kit's own child (the
// process that holds the namespaces, `rootlesskit --state-dir=HOME/rootless`). A kit being
// started has that child from the first, so it is never taken for a dead one.
func staleKits(groups map[userNS][]nsProcess, home string) []userNS {
	hm := marksOf(home)
	holder := "--state-dir=" + filepath.Join(home, "rootless")
	var out []userNS
	for ns, procs := range groups {
		marked, live := false, false
		for _, p := range procs {
			marked = marked || hm.names(p.argv)
			live = live || slices.Contains(p.argv, holder)
		}
		if marked && !live {
			out = append(out, ns)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// SweepStaleKits kills what dead rootlesskits of home left running: a kit killed with -9
// leaves its shims, containers, gVisor sandboxes and loggers behind, which its successor's
// containerd cannot reach. Only a process outside every kit (in the host's user namespace)
// sees them all: inside a kit, another kit's processes cannot be inspected. It returns the
// namespaces it found, with how many processes each held.
func SweepStaleKits(home string) ([]string, error) {
	if abs, err := filepath.Abs(home); err == nil {
		home = abs
	}
	groups := kitProcesses()
	stale := staleKits(groups, home)
	var found []string
	for _, ns := range stale {
		found = append(found, fmt.Sprintf("%s (%d processes)", ns, len(groups[ns])))
	}
	if len(stale) == 0 {
		return nil, nil
	}
	_, err := killUserNS(stale, 5*time.Second)
	return found, err
}

// killUserNS kills (SIGKILL) every process in namespaces, and in those nested in them, other
// than this one, until none is left; it returns how many it killed, and an error naming
// those still there after timeout.
func killUserNS(namespaces []userNS, timeout time.Duration) (int, error) {
	want := map[userNS]bool{}
	for _, ns := range namespaces {
		want[ns] = true
	}
	killed := map[int]bool{}
	deadline := time.Now().Add(timeout)
	for {
		var left []string
		for ns, procs := range kitProcesses() {
			for _, p := range procs {
				// A zombie holds nothing; its parent, killed too, lets it go.
				if !want[ns] || zombie(p.pid) {
					continue
				}
				err := syscall.Kill(p.pid, syscall.SIGKILL)
				switch {
				case err == nil:
					killed[p.pid] = true
					left = append(left, strconv.Itoa(p.pid))
				case err != syscall.ESRCH:
					left = append(left, fmt.Sprintf("%d (%s: %v)", p.pid, filepath.Base(p.argv[0]), err))
				}
			}
		}
		if len(left) == 0 {
			return len(killed), nil
		}
		if time.Now().After(deadline) {
			return len(killed), fmt.Errorf("processes of rootlesskit's namespaces are still there after SIGKILL: %s (kill them by pid)", strings.Join(left, ", "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// zombie reports whether pid has exited and awaits its parent (or is gone).
func zombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command, in parentheses that may hold anything.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] == 'Z' || b[i+2] == 'X'
	}
	return false
}
