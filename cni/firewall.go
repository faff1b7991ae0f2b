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
	"strings"
)

// Each run gets its own iptables rules, every one commented "moatc run ID: why", so they can
// be found and removed from the id alone, even when the record is lost. They are added and
// removed in one iptables-restore call each (one process, one atomic transaction).

type rule struct {
	table, chain  string
	match, target string
	why           string
}

func ruleTag(runID string) string { return "moatc run " + runID + ":" }

// runRules are the rules of one run, in the order they sit at the top of their chains. They
// match on the run's bridge, which a run cannot change, rather than on addresses alone. Only the
// filter and nat tables are used: each table touched costs a kernel commit (~10 ms to delete).
func runRules(r *record) []rule {
	br, sub, pool := bridgeName(r.RunID), r.Subnet.String(), r.Pool.String()
	return []rule{
		// A run that forges its source address could pose as another run or the host.
		{"filter", "INPUT", "-i " + br + " ! -s " + sub, "DROP",
			"drop packets whose source is not the run's subnet"},
		{"filter", "FORWARD", "-i " + br + " ! -s " + sub, "DROP",
			"drop packets whose source is not the run's subnet"},
		{"filter", "FORWARD", "-i " + br + " -d " + pool, "DROP",
			"a run may not reach other runs"},
		{"filter", "FORWARD", "-i " + br, "ACCEPT",
			"egress, even where the FORWARD policy is DROP"},
		{"filter", "FORWARD", "-o " + br + " -m conntrack --ctstate RELATED,ESTABLISHED", "ACCEPT",
			"replies to the run's own connections"},
		// Published ports come in through the proxy from the host itself (OUTPUT, not FORWARD).
		{"filter", "FORWARD", "-o " + br, "DROP",
			"nothing else is forwarded into the run"},
		// moatc's own NAT rule: the bridge plugin's ipMasq rules leak under gVisor.
		{"nat", "POSTROUTING", "-s " + sub + " ! -o " + br, "MASQUERADE",
			"egress leaves with the host's address"},
	}
}

type firewall struct{ restore, save string }

func findFirewall() (firewall, error) {
	var fw firewall
	for _, n := range []struct {
		name string
		dst  *string
	}{{"iptables-restore", &fw.restore}, {"iptables-save", &fw.save}} {
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
// chains in the given order, "-D" deletes them.
func script(rules []rule, op string, tag string) []byte {
	var b bytes.Buffer
	for _, table := range []string{"raw", "filter", "nat"} {
		pos := map[string]int{}
		started := false
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

func (fw firewall) add(ctx context.Context, r *record) error {
	if err := fw.apply(ctx, script(runRules(r), "-I", ruleTag(r.RunID))); err != nil {
		return fmt.Errorf("adding firewall rules: %w", err)
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
	cmd := exec.CommandContext(ctx, fw.save)
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
