package rootless

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Outside is the world beyond the kit's network namespace as slirp4netns shows it there. Runs
// reach the host's loopback at HostLoopback (slirp4netns connects to 127.0.0.1 on the host for
// them), and the host's other addresses directly (slirp4netns connects to them from the host):
// moatc's rules close both but for the host ports opened to a run (see the cni package).
type Outside struct {
	Net          netip.Prefix `json:"net"`           // slirp4netns's network, 10.0.2.0/24
	HostLoopback netip.Addr   `json:"host_loopback"` // the host's 127.0.0.1 through slirp4netns, 10.0.2.2
	DNS          netip.Addr   `json:"dns"`           // slirp4netns's resolver, 10.0.2.3
}

// Outside asks the kit for its slirp4netns network. slirp4netns gives the namespace an address
// in a /24 whose .2 is the host and .3 its resolver.
func (k Kit) Outside(ctx context.Context) (Outside, error) {
	in, err := k.Ports().Info(ctx)
	if err != nil {
		return Outside{}, err
	}
	return outsideOf(in)
}

func outsideOf(in *Info) (Outside, error) {
	nd := in.NetworkDriver
	if nd.Driver != "slirp4netns" {
		return Outside{}, fmt.Errorf("rootless networking needs rootlesskit's slirp4netns network driver, and this rootlesskit uses %q: drop --address to use moatc's own rootless containerd", nd.Driver)
	}
	child, err := netip.ParseAddr(nd.ChildIP)
	if err != nil || !child.Is4() {
		return Outside{}, fmt.Errorf("rootlesskit reports no IPv4 address for its namespace (%q)", nd.ChildIP)
	}
	o := Outside{Net: netip.PrefixFrom(child, 24).Masked()}
	o.HostLoopback = o.Net.Addr().Next().Next()
	o.DNS = o.HostLoopback.Next()
	if len(nd.DNS) > 0 {
		if d, err := netip.ParseAddr(nd.DNS[0]); err == nil {
			o.DNS = d
		}
	}
	return o, nil
}

// HostAddrs are the host's own IPv4 addresses but loopback (as prefixes: a "local" route
// makes the host answer a whole range): those of the network namespace rootlesskit's parent
// (and slirp4netns) runs in. They are read from the parent's /proc/PID/net, which the
// namespaces' uid 0 may read though it may not enter that namespace.
func (k Kit) HostAddrs() ([]netip.Prefix, error) {
	pid, err := k.ChildPid()
	if err != nil {
		return nil, err
	}
	ppid, err := parentPid(pid)
	if err != nil {
		return nil, fmt.Errorf("finding the host's addresses: %w", err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/fib_trie", ppid))
	if err != nil {
		return nil, fmt.Errorf("finding the host's addresses: %w", err)
	}
	return localAddrs(b), nil
}

func parentPid(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PPid:"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n <= 0 {
				break
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status names no parent", pid)
}

// localAddrs reads what a namespace answers as its own from its fib_trie: each "|-- ADDR"
// leaf with a "/N host LOCAL" line under it is ADDR/N (/32 for an interface's address).
// Loopback is left out.
func localAddrs(fibTrie []byte) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var leaf netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(fibTrie))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if a, ok := strings.CutPrefix(l, "|-- "); ok {
			leaf, _ = netip.ParseAddr(a)
			continue
		}
		f := strings.Fields(l)
		if len(f) < 3 || f[1] != "host" || f[2] != "LOCAL" || !leaf.Is4() || leaf.IsLoopback() {
			continue
		}
		bits, err := strconv.Atoi(strings.TrimPrefix(f[0], "/"))
		if err != nil || bits < 0 || bits > 32 {
			continue
		}
		seen[netip.PrefixFrom(leaf, bits).Masked()] = true
	}
	out := make([]netip.Prefix, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Addr().Less(out[j].Addr()) || out[i].Addr() == out[j].Addr() && out[i].Bits() < out[j].Bits()
	})
	return out
}
