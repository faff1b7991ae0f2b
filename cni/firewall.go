package cni

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/internal/lockfile"
)

// Each run gets its own iptables rules, every one commented "moatc run ID: why", so they can
// be found and removed from the id alone, even when the record is lost. They are added and
// removed in one iptables-restore call each (one process, one atomic transaction).
//
// The filter rules live in moatc's own chains, MOATC-INPUT and MOATC-FORWARD, jumped to first
// thing from INPUT and FORWARD. The chains are shared by every moatc home on the host, made
// when missing under a host-wide lock, and removed by Prune once no run rule is left in them.

const (
	chainInput   = "MOATC-INPUT"
	chainForward = "MOATC-FORWARD"
	// useLock is held shared by every Setup from before CNI ADD (the bridge plugin turns on
	// forwarding there) until its rules are in, and exclusively by Prune: Prune never removes
	// the chains or turns forwarding off under a network being made.
	useLock = "/run/moatc-firewall.lock"
	// editLock serializes changes to the shared chains across processes and moatc homes.
	editLock = "/run/moatc-firewall-edit.lock"
	// forwardingMark exists while ip_forward is on because moatc turned it on. Forwarding
	// then serves moatc's bridges only: MOATC-FORWARD ends in a DROP for everything else, so
	// the host does not start routing between its other interfaces. /run goes with a reboot,
	// as the sysctl does.
	forwardingMark = "/run/moatc-forwarding"
)

// jumps are moatc's chains and the built-in chains that jump to them first thing.
var jumps = []struct{ chain, from string }{{chainInput, "INPUT"}, {chainForward, "FORWARD"}}

// linkLocal holds the cloud metadata address (169.254.169.254) and every other link-local one.
const linkLocal = "169.254.0.0/16"

type rule struct {
	table, chain  string
	match, target string
	why           string
}

func ruleTag(runID string) string { return "moatc run " + runID + ":" }

// runRules are the rules of one run, in the order they sit at the top of their chains. They
// match on the run's bridge, which a run cannot change, rather than on addresses alone (a
// workload with NET_ADMIN picks its own source address). Only the filter and nat tables are
// used: each table touched costs a kernel commit (~10 ms to delete).
func runRules(r *record) []rule {
	br, sub, pool, gw := bridgeName(r.RunID), r.Subnet.String(), r.Pool.String(), r.Gateway.String()
	rules := []rule{
		// A run that forges its source address could pose as another run or the host.
		{"filter", chainInput, "-i " + br + " ! -s " + sub, "DROP",
			"drop packets whose source is not the run's subnet"},
		{"filter", chainInput, "-i " + br + " -m conntrack --ctstate RELATED,ESTABLISHED", "ACCEPT",
			"replies to the host's own connections (published ports)"},
	}
	for _, h := range r.Services {
		rules = append(rules, rule{"filter", chainInput, fmt.Sprintf("-i %s -d %s -p %s --dport %d", br, gw, h.Proto, h.Port), "ACCEPT",
			fmt.Sprintf("moatc's service %s for the run (its proxy)", h)})
	}
	// Under a strict policy the host ports too are reached through the proxy only. Rootless,
	// they are the host's, outside the namespace: see outsideRules.
	if !r.Strict && r.Outside == nil {
		for _, h := range r.HostPorts {
			rules = append(rules, rule{"filter", chainInput, fmt.Sprintf("-i %s -d %s -p %s --dport %d", br, gw, h.Proto, h.Port), "ACCEPT",
				fmt.Sprintf("host port %s opened for the run", h)})
		}
	}
	rules = append(rules,
		// The host's services (on any of its addresses) are closed to runs by default.
		rule{"filter", chainInput, "-i " + br, "DROP", "the host is closed to the run"},
		rule{"filter", chainForward, "-i " + br + " ! -s " + sub, "DROP",
			"drop packets whose source is not the run's subnet"},
		// bridge-nf-call-iptables sends traffic between two ports of the bridge through FORWARD:
		// the run and the containers attached to its network (Attach) reach each other.
		rule{"filter", chainForward, "-i " + br + " -o " + br, "ACCEPT",
			"the run and its attached containers reach each other"})
	if r.Strict {
		// Before the task exists, so the workload's first packet meets it: no DNS, no IPv4
		// anywhere but the proxy (IPv6 is off on the bridge), whatever it does inside.
		rules = append(rules, rule{"filter", chainForward, "-i " + br, "DROP",
			"strict policy: the run reaches nothing but its proxy"})
	} else {
		rules = append(rules, outsideRules(r)...)
		rules = append(rules,
			rule{"filter", chainForward, "-i " + br + " -d " + pool, "DROP",
				"a run may not reach other runs"},
			rule{"filter", chainForward, "-i " + br + " -d " + linkLocal, "DROP",
				"no link-local or cloud metadata addresses"},
			rule{"filter", chainForward, "-i " + br, "ACCEPT",
				"egress, even where the FORWARD policy is DROP"})
	}
	rules = append(rules,
		rule{"filter", chainForward, "-o " + br + " -m conntrack --ctstate RELATED,ESTABLISHED", "ACCEPT",
			"replies to the run's own connections"},
		// Published ports come in through the proxy from the host itself (OUTPUT, not FORWARD).
		rule{"filter", chainForward, "-o " + br, "DROP",
			"nothing else is forwarded into the run"})
	if !r.Strict {
		if o := r.Outside; o != nil {
			for _, h := range r.HostPorts {
				rules = append(rules, rule{"nat", "PREROUTING", fmt.Sprintf("-i %s -d %s -p %s --dport %d", br, gw, h.Proto, h.Port),
					fmt.Sprintf("DNAT --to-destination %s", netip.AddrPortFrom(o.HostLoopback, h.Port)),
					fmt.Sprintf("host port %s opened for the run: moatc-host is the host's loopback through slirp4netns", h)})
			}
		}
		// moatc's own NAT rule: the bridge plugin's ipMasq rules leak under gVisor.
		rules = append(rules, rule{"nat", "POSTROUTING", "-s " + sub + " ! -o " + br, "MASQUERADE",
			"egress leaves with the host's address"})
	}
	return rules
}

// outsideRules close, for a rootless moatc's run (without a strict policy, which forwards
// nothing), what lies beyond rootlesskit's namespace and is the user's host: slirp4netns's
// network (its .2 is the host's loopback) but its resolver, and the host's own addresses
// (slirp4netns connects to them from the host). A host port opened for the run is forwarded to
// the host's loopback only as the DNAT of a connection to moatc-host (the gateway).
func outsideRules(r *record) []rule {
	o := r.Outside
	if o == nil {
		return nil
	}
	br, gw := bridgeName(r.RunID), r.Gateway.String()
	var rules []rule
	for _, h := range r.HostPorts {
		rules = append(rules, rule{"filter", chainForward,
			fmt.Sprintf("-i %s -d %s -p %s --dport %d -m conntrack --ctstate DNAT --ctorigdst %s", br, o.HostLoopback, h.Proto, h.Port, gw), "ACCEPT",
			fmt.Sprintf("host port %s opened for the run, at moatc-host only", h)})
	}
	for _, proto := range []string{"udp", "tcp"} {
		rules = append(rules, rule{"filter", chainForward, fmt.Sprintf("-i %s -d %s -p %s --dport 53", br, o.DNS, proto), "ACCEPT",
			"DNS through slirp4netns's resolver"})
	}
	rules = append(rules, rule{"filter", chainForward, "-i " + br + " -d " + o.Net.String(), "DROP",
		"slirp4netns's network is closed to the run: its .2 is the host's loopback"})
	for _, a := range o.HostAddrs {
		rules = append(rules, rule{"filter", chainForward, "-i " + br + " -d " + a.String(), "DROP",
			"the host's own addresses are closed to the run"})
	}
	return rules
}

type firewall struct{ restore, saveBin string }

func findFirewall() (firewall, error) {
	var fw firewall
	for _, n := range []struct {
		name string
		dst  *string
	}{{"iptables-restore", &fw.restore}, {"iptables-save", &fw.saveBin}} {
		p, err := lookSbin(n.name)
		if err != nil {
			return fw, fmt.Errorf("%s not found in PATH, /usr/sbin or /sbin; install it with `apt-get install iptables`: %w", n.name, err)
		}
		*n.dst = p
	}
	return fw, nil
}

func lookSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := d + "/" + name
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// script renders rules for iptables-restore --noflush: op "-I" inserts them at the top of their
// chains in the given order, "-D" deletes them. prelude lines go first in the filter table.
func script(rules []rule, op string, tag string, prelude ...string) []byte {
	var b bytes.Buffer
	for _, table := range []string{"raw", "filter", "nat"} {
		pos := map[string]int{}
		started := false
		if table == "filter" && len(prelude) > 0 {
			fmt.Fprintf(&b, "*filter\n%s\n", strings.Join(prelude, "\n"))
			started = true
		}
		for _, r := range rules {
			if r.table != table {
				continue
			}
			if !started {
				fmt.Fprintf(&b, "*%s\n", table)
				started = true
			}
			where := r.chain
			if op == "-I" {
				pos[r.chain]++
				where = fmt.Sprintf("%s %d", r.chain, pos[r.chain])
			}
			fmt.Fprintf(&b, "%s %s %s -m comment --comment \"%s %s\" -j %s\n", op, where, r.match, tag, r.why, r.target)
		}
		if started {
			b.WriteString("COMMIT\n")
		}
	}
	return b.Bytes()
}

func (fw firewall) apply(ctx context.Context, in []byte) error {
	cmd := exec.CommandContext(ctx, fw.restore, "-w", "10", "--noflush")
	cmd.Stdin = bytes.NewReader(in)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables-restore: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// hold is called before a network is made and its release after its rules are in. It notes
// whether forwarding was off before moatc (the bridge plugin turns it on at ADD), so that add
// puts the guard in.
func (fw firewall) hold() (release func(), err error) {
	release, err = lockfile.Flock(useLock, unix.LOCK_SH)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			release()
		}
	}()
	unlock, err := lockfile.Flock(editLock, unix.LOCK_EX)
	if err != nil {
		return nil, err
	}
	defer unlock()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return nil, fmt.Errorf("reading ip_forward: %w", err)
	}
	if strings.TrimSpace(string(b)) == "0" {
		// Mark first: a crash in between leaves the guard on, never routing without it.
		if err := os.WriteFile(forwardingMark, []byte("moatc turned net.ipv4.ip_forward on\n"), 0o644); err != nil {
			return nil, fmt.Errorf("turning on forwarding: %w", err)
		}
	}
	// Egress needs forwarding; the kernel default is off.
	if err := sysctl("net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	return release, nil
}

// add inserts a run's rules, making moatc's chains first where they are missing. Call it
// between hold and its release.
func (fw firewall) add(ctx context.Context, r *record) error {
	unlock, err := lockfile.Flock(editLock, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	prelude, err := fw.ensure(ctx)
	if err != nil {
		return err
	}
	if err := fw.apply(ctx, script(runRules(r), "-I", ruleTag(r.RunID), prelude...)); err != nil {
		return fmt.Errorf("adding firewall rules: %w", err)
	}
	return nil
}

// guardWhy is the guard's comment; it has no quote or other character iptables-save escapes,
// so the saved rule reads as it was written.
const guardWhy = "moatc: forwarding was off before moatc and serves its runs only"

// ensure returns the filter lines that make moatc's chains, their jumps and the forwarding
// guard where they are missing. Call it under editLock.
func (fw firewall) ensure(ctx context.Context) ([]string, error) {
	_, marked := os.Stat(forwardingMark)
	saved, err := fw.save(ctx, "filter")
	if err != nil {
		return nil, err
	}
	has := func(line string) bool { return slices.Contains(saved, line) }
	var out []string
	for _, c := range jumps {
		if !slices.ContainsFunc(saved, func(l string) bool { return strings.HasPrefix(l, ":"+c.chain+" ") }) {
			out = append(out, ":"+c.chain+" - [0:0]")
		}
		if !has("-A " + c.from + " -j " + c.chain) {
			out = append(out, "-I "+c.from+" 1 -j "+c.chain)
		}
	}
	guard := fmt.Sprintf("-A %s -m comment --comment \"%s\" -j DROP", chainForward, guardWhy)
	if marked == nil && !slices.ContainsFunc(saved, func(l string) bool { return strings.Contains(l, guardWhy) }) {
		out = append(out, guard)
	}
	return out, nil
}

// save returns iptables-save's lines for one table.
func (fw firewall) save(ctx context.Context, table string) ([]string, error) {
	cmd := exec.CommandContext(ctx, fw.saveBin, "-t", table)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return strings.Split(string(out), "\n"), nil
}

// Prune removes moatc's chains, their jumps and the forwarding guard once no run of any moatc
// home has rules in them, and turns forwarding off again if moatc turned it on.
func Prune(ctx context.Context) error {
	fw, err := findFirewall()
	if err != nil {
		return nil // without iptables there is nothing to prune
	}
	unuse, err := lockfile.Flock(useLock, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unuse()
	unlock, err := lockfile.Flock(editLock, unix.LOCK_EX)
	if err != nil {
		return err
	}
	defer unlock()
	saved, err := fw.save(ctx, "filter")
	if err != nil {
		return err
	}
	if slices.ContainsFunc(saved, func(l string) bool { return strings.Contains(l, "--comment \"moatc run ") }) {
		return nil // a run (or a build network) still uses them
	}
	var del []string
	for _, c := range jumps {
		if slices.Contains(saved, "-A "+c.from+" -j "+c.chain) {
			del = append(del, "-D "+c.from+" -j "+c.chain)
		}
		if slices.ContainsFunc(saved, func(l string) bool { return strings.HasPrefix(l, ":"+c.chain+" ") }) {
			del = append(del, "-F "+c.chain, "-X "+c.chain)
		}
	}
	if len(del) > 0 {
		if err := fw.apply(ctx, []byte("*filter\n"+strings.Join(del, "\n")+"\nCOMMIT\n")); err != nil {
			return fmt.Errorf("removing moatc's chains: %w", err)
		}
	}
	if _, err := os.Stat(forwardingMark); err == nil {
		if err := sysctl("net/ipv4/ip_forward", "0"); err != nil {
			return err
		}
		os.Remove(forwardingMark)
	}
	return nil
}

// remove deletes a run's rules: the known set in one call when all are there, otherwise
// whatever iptables-save shows with the run's tag.
func (fw firewall) remove(ctx context.Context, runID string, r *record) error {
	if r != nil && r.Subnet.IsValid() {
		if fw.apply(ctx, script(runRules(r), "-D", ruleTag(runID))) == nil {
			return nil
		}
	}
	found, err := fw.scan(ctx)
	if err != nil {
		return err
	}
	lines := found[runID]
	if len(lines) == 0 {
		return nil
	}
	var b bytes.Buffer
	for _, table := range []string{"raw", "mangle", "filter", "nat", "security"} {
		var del []string
		for _, l := range lines {
			if l.table == table {
				del = append(del, "-D"+strings.TrimPrefix(l.text, "-A"))
			}
		}
		if len(del) > 0 {
			fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", table, strings.Join(del, "\n"))
		}
	}
	if err := fw.apply(ctx, b.Bytes()); err != nil {
		return fmt.Errorf("removing firewall rules: %w", err)
	}
	return nil
}

type savedRule struct{ table, text string }

var tagRE = regexp.MustCompile(`--comment "?moatc run ([A-Za-z0-9_-]+):`)

// scan returns the rules of iptables-save that carry a moatc run tag, by run id.
func (fw firewall) scan(ctx context.Context) (map[string][]savedRule, error) {
	cmd := exec.CommandContext(ctx, fw.saveBin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("iptables-save: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	found := map[string][]savedRule{}
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "*") {
			table = l[1:]
			continue
		}
		if !strings.HasPrefix(l, "-A ") {
			continue
		}
		if m := tagRE.FindStringSubmatch(l); m != nil {
			found[m[1]] = append(found[m[1]], savedRule{table, l})
		}
	}
	return found, sc.Err()
}

var addrRE = regexp.MustCompile(`(?:^| )-[sd] ([0-9.]+(?:/[0-9]+)?)`)

// inPool reports whether a saved rule names an address range inside pool.
func inPool(text string, pool netip.Prefix) bool {
	for _, m := range addrRE.FindAllStringSubmatch(text, -1) {
		p, err := netip.ParsePrefix(m[1])
		if err != nil {
			a, err2 := netip.ParseAddr(m[1])
			if err2 != nil {
				continue
			}
			p = netip.PrefixFrom(a, 32)
		}
		if pool.Overlaps(p) {
			return true
		}
	}
	return false
}
