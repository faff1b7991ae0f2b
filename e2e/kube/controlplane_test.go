package kube

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ports the cluster listens on, all on 127.0.0.1, chosen free at start.
type ports struct {
	etcd, etcdPeer, apiserver, kubelet int
}

// makePKI makes the CA, every certificate the cluster uses and the kubeconfigs. The apiserver
// reaches the kubelet by its node name (localhost), so the kubelet's serving certificate is
// for localhost and the apiserver verifies it.
func (c *cluster) makePKI() error {
	p, err := newPKI(c.path("pki"))
	if err != nil {
		return err
	}
	c.pki = p
	specs := map[string]certSpec{
		"apiserver": {cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []string{"127.0.0.1", serviceIP}},
		"admin":                    {cn: "moatc-test-admin", orgs: []string{"system:masters"}},
		"apiserver-kubelet-client": {cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}},
		"kubelet-client":           {cn: "system:node:" + nodeName, orgs: []string{"system:nodes"}},
		"kubelet-serving":          {cn: nodeName, server: true, dns: []string{nodeName}, ips: []string{"127.0.0.1"}},
	}
	for name, s := range specs {
		if _, err := p.issue(name, s); err != nil {
			return err
		}
	}
	if _, _, err := p.serviceAccountKey(); err != nil {
		return err
	}
	pp, err := freePorts(4)
	if err != nil {
		return err
	}
	c.ports = ports{etcd: pp[0], etcdPeer: pp[1], apiserver: pp[2], kubelet: pp[3]}
	server := "https://127.0.0.1:" + strconv.Itoa(c.ports.apiserver)
	c.Kubeconfig = c.path("admin.kubeconfig")
	if err := writeKubeconfig(c.Kubeconfig, server, contextName, p.caPEM, c.pki.pair("admin")); err != nil {
		return fmt.Errorf("writing the admin kubeconfig: %w", err)
	}
	if err := writeKubeconfig(c.path("kubelet.kubeconfig"), server, contextName, p.caPEM, c.pki.pair("kubelet-client")); err != nil {
		return fmt.Errorf("writing the kubelet's kubeconfig: %w", err)
	}
	return c.newClient()
}

// startEtcd starts Debian's etcd with its data in the cluster's directory. The apiserver
// retries etcd, so nothing waits for it here.
func (c *cluster) startEtcd(ctx context.Context) error {
	client := "http://127.0.0.1:" + strconv.Itoa(c.ports.etcd)
	peer := "http://127.0.0.1:" + strconv.Itoa(c.ports.etcdPeer)
	_, err := c.spawn("etcd", etcdBin, flags(
		"name", "default",
		"data-dir", c.path("etcd"),
		"listen-client-urls", client,
		"advertise-client-urls", client,
		"listen-peer-urls", peer,
		"initial-advertise-peer-urls", peer,
		"initial-cluster", "default="+peer,
		"logger", "zap",
		"log-outputs", "stderr",
	)...)
	return err
}

// startAPIServer starts kube-apiserver once etcd answers (it would retry, but an etcd that
// does not come up is clearer from etcd's own log).
func (c *cluster) startAPIServer(ctx context.Context) error {
	if err := waitUntil(ctx, "etcd to be healthy", c.daemons["etcd"], c.etcdHealthy); err != nil {
		return err
	}
	pki := c.path("pki") + "/"
	_, err := c.spawn("kube-apiserver", kubeBin("kube-apiserver"), flags(
		"etcd-servers", "http://127.0.0.1:"+strconv.Itoa(c.ports.etcd),
		"bind-address", "127.0.0.1",
		"advertise-address", "127.0.0.1",
		"secure-port", strconv.Itoa(c.ports.apiserver),
		"cert-dir", c.path("apiserver"), // unused (certificates given), but not /var/run/kubernetes
		"tls-cert-file", pki+"apiserver.crt",
		"tls-private-key-file", pki+"apiserver.key",
		"client-ca-file", pki+"ca.crt",
		"service-cluster-ip-range", serviceCIDR,
		"service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"service-account-key-file", pki+"sa.pub",
		"service-account-signing-key-file", pki+"sa.key",
		"authorization-mode", "Node,RBAC",
		"kubelet-client-certificate", pki+"apiserver-kubelet-client.crt",
		"kubelet-client-key", pki+"apiserver-kubelet-client.key",
		"kubelet-certificate-authority", pki+"ca.crt",
		// The kubelet's node name is localhost (see kubernetes.md); no endpoint reconciler on
		// 127.0.0.1.
		"kubelet-preferred-address-types", "Hostname",
		"endpoint-reconciler-type", "none",
		"allow-privileged", "true",
		"profiling", "false",
		"v", "1",
	)...)
	return err
}

// waitAPIServer waits for /readyz: etcd reached, bootstrap RBAC and priority classes made.
func (c *cluster) waitAPIServer(ctx context.Context) error {
	return waitUntil(ctx, "kube-apiserver to be ready", c.daemons["kube-apiserver"], func(ctx context.Context) error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(rctx)
		return err
	})
}

// startScheduler starts kube-scheduler as the admin, without its own HTTPS server (nothing
// here probes it) and without leader election (it is alone).
func (c *cluster) startScheduler(ctx context.Context) error {
	_, err := c.spawn("kube-scheduler", kubeBin("kube-scheduler"), flags(
		"kubeconfig", c.Kubeconfig,
		"leader-elect", "false",
		"bind-address", "127.0.0.1",
		"secure-port", "0",
		"v", "1",
	)...)
	return err
}

// startControllerManager starts kube-controller-manager as the admin, alone (no leader
// election) and without its HTTPS server. Its controllers make each namespace's "default"
// ServiceAccount and kube-root-ca.crt, collect garbage by owner, and keep the node's taints.
func (c *cluster) startControllerManager(ctx context.Context) error {
	pki := c.path("pki") + "/"
	_, err := c.spawn("kube-controller-manager", kubeBin("kube-controller-manager"), flags(
		"kubeconfig", c.Kubeconfig,
		"leader-elect", "false",
		"bind-address", "127.0.0.1",
		"secure-port", "0",
		"root-ca-file", pki+"ca.crt",
		"service-account-private-key-file", pki+"sa.key",
		"v", "1",
	)...)
	return err
}

// etcdHealthy asks etcd's /health.
func (c *cluster) etcdHealthy(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:"+strconv.Itoa(c.ports.etcd)+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("etcd /health: %s", body)
	}
	return nil
}

const etcdBin = "/usr/bin/etcd"
