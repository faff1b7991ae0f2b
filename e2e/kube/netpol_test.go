package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The cluster's NetworkPolicy engine is kube-router's firewall alone (no routing, no service
// proxy, no CNI), run as a host process as the other daemons are. It writes iptables rules and
// ipsets on the host; kube-router --cleanup-config removes them.

// startKubeRouter starts it once the node is Ready (it reads the node's address) and waits for
// its top chain, which it makes on its first sync.
func (c *cluster) startKubeRouter(ctx context.Context) error {
	d, err := c.spawn("kube-router", kubeBin("kube-router"), flags(
		"kubeconfig", c.Kubeconfig,
		"hostname-override", nodeName,
		"run-firewall", "true",
		"run-router", "false",
		"run-service-proxy", "false",
		"enable-cni", "false",
		"service-cluster-ip-range", serviceCIDR,
		"health-port", "0",
		"metrics-port", "0",
		"v", "1",
	)...)
	if err != nil {
		return err
	}
	return waitUntil(ctx, "kube-router's firewall chains", d, func(context.Context) error {
		if out, err := exec.Command("iptables", "-w", "-S", "KUBE-ROUTER-FORWARD").CombinedOutput(); err != nil {
			return fmt.Errorf("iptables -S KUBE-ROUTER-FORWARD: %v: %s", err, out)
		}
		return nil
	})
}

// kubeRouterLeft lists the iptables lines and ipsets of kube-router's on the host.
func kubeRouterLeft() []string {
	var out []string
	if b, err := exec.Command("iptables-save").Output(); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "KUBE-ROUTER") || strings.Contains(l, "KUBE-POD-FW") || strings.Contains(l, "KUBE-NWPLCY") {
				out = append(out, "iptables "+l)
			}
		}
	}
	if b, err := exec.Command("ipset", "list", "-n").Output(); err == nil {
		for _, s := range strings.Fields(string(b)) {
			if strings.HasPrefix(s, "KUBE-") || strings.HasPrefix(s, "kube-router") {
				out = append(out, "ipset "+s)
			}
		}
	}
	return out
}

// isKubeRouterChain says whether an iptables chain is one of kube-router's.
func isKubeRouterChain(c string) bool {
	for _, p := range []string{"KUBE-ROUTER-", "KUBE-POD-FW-", "KUBE-NWPLCY-"} {
		if strings.HasPrefix(c, p) {
			return true
		}
	}
	return false
}

// cleanKubeRouter removes kube-router's iptables rules, chains and ipsets when any are left.
// Not with its own --cleanup-config: v2.1.0's panics in the service proxy's part (never run
// here) after deleting every IPVS service on the host.
func cleanKubeRouter() error {
	if len(kubeRouterLeft()) == 0 {
		return nil
	}
	saved, err := exec.Command("iptables-save").Output()
	if err != nil {
		return fmt.Errorf("iptables-save: %w", err)
	}
	// Per table: the jumps into its chains from others, then its chains' rules, then them.
	var script []string
	var del, flush []string
	table := ""
	for _, l := range strings.Split(string(saved), "\n") {
		f := strings.Fields(l)
		switch {
		case strings.HasPrefix(l, "*"):
			table, del, flush = l, nil, nil
		case strings.HasPrefix(l, ":") && isKubeRouterChain(strings.TrimPrefix(f[0], ":")):
			flush = append(flush, strings.TrimPrefix(f[0], ":"))
		case len(f) > 2 && f[0] == "-A" && !isKubeRouterChain(f[1]) && strings.Contains(l, "-j KUBE-") &&
			isKubeRouterChain(f[len(f)-1]):
			del = append(del, "-D"+strings.TrimPrefix(l, "-A"))
		case l == "COMMIT" && len(del)+len(flush) > 0:
			script = append(script, table)
			script = append(script, del...)
			for _, c := range flush {
				script = append(script, "-F "+c)
			}
			for _, c := range flush {
				script = append(script, "-X "+c)
			}
			script = append(script, "COMMIT")
		}
	}
	var errs []error
	if len(script) > 0 {
		cmd := exec.Command("iptables-restore", "--noflush", "-w")
		cmd.Stdin = strings.NewReader(strings.Join(script, "\n") + "\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("removing kube-router's iptables rules: %v: %s", err, out))
		}
	}
	if b, err := exec.Command("ipset", "list", "-n").Output(); err == nil {
		for _, s := range strings.Fields(string(b)) {
			if strings.HasPrefix(s, "KUBE-") || strings.HasPrefix(s, "kube-router") {
				if out, err := exec.Command("ipset", "destroy", s).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Errorf("ipset destroy %s: %v: %s", s, err, out))
				}
			}
		}
	}
	if left := kubeRouterLeft(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("kube-router's rules left: %s", strings.Join(left, "; ")))
	}
	return errors.Join(errs...)
}

// TestKubeNetworkPolicyEnforced: with a policy engine on the cluster (kube-router here), a
// strict run's workload reaches an allowed address through the proxy pod and not directly,
// while a run without a policy reaches it directly: the NetworkPolicies moatc makes are what
// stands between the workload and the network, not the proxy settings in its environment.
func TestKubeNetworkPolicyEnforced(t *testing.T) {
	c := needCluster(t)
	needBusybox(t)
	// The target: an open run serving a page, which prints its pod's address first.
	target := exec.Command(moatc, append(kubeArgs(c, "run", "--name", "np-target", "--stop-timeout", "1"), t.TempDir(), "--",
		"sh", "-c", "hostname -i; mkdir -p /tmp/w && echo target-page > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w")...)
	var tout, terr bytes.Buffer
	target.Stdout, target.Stderr = &tout, &terr
	if err := target.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		moatcRun(t, "", "stop", "np-target")
		done := make(chan struct{})
		go func() { target.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			target.Process.Kill()
		}
		moatcRun(t, "", "destroy", "--force", "np-target")
	})
	var ip string
	for deadline := time.Now().Add(2 * time.Minute); ip == "" && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if l, _, ok := strings.Cut(tout.String(), "\n"); ok {
			ip = strings.TrimSpace(l)
		}
	}
	if net.ParseIP(ip) == nil {
		t.Fatalf("the target run printed no address: %q\n%s", tout.String(), terr.String())
	}
	url := "http://" + ip + ":8080/"
	ws := t.TempDir()
	buildFetch(t, ws)

	// Without a policy the pod network is open: the target answers directly.
	open := moatcRun(t, "", append(kubeArgs(c, "run", "--name", "np-open"), ws, "--",
		"env", "-u", "HTTP_PROXY", "-u", "http_proxy", "./fetch", url)...)
	moatcRun(t, "", "destroy", "--force", "np-open")
	if open.code != 0 || !strings.Contains(open.stdout, "200 target-page") {
		t.Fatalf("a run without a policy did not reach the target directly (exit %d):\n%s\n%s", open.code, open.stdout, open.stderr)
	}

	// Strict, the target allowed: through the proxy it answers; directly (the proxy settings
	// dropped, as a hostile workload would) the workload's egress policy refuses it.
	script := fmt.Sprintf(`./fetch %[1]s | sed 's/^/proxied: /'; env -u HTTP_PROXY -u http_proxy -u HTTPS_PROXY -u https_proxy ./fetch %[1]s | sed 's/^/direct: /'; true`, url)
	r := moatcRun(t, "", append(kubeArgs(c, "run", "--name", "np-strict", "--policy", "strict", "--allow", ip+":8080"), ws, "--", "sh", "-c", script)...)
	moatcRun(t, "", "destroy", "--force", "np-strict")
	if r.code != 0 {
		t.Fatalf("strict run: exit %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "proxied: "+url+": 200 target-page") {
		t.Errorf("the allowed address did not answer through the proxy:\n%s\n%s", r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "direct: "+url+": error") {
		t.Errorf("the workload reached the target without the proxy: its egress policy is not enforced:\n%s\n%s", r.stdout, r.stderr)
	}
}
