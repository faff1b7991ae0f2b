package kube

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// cluster is the single-node Kubernetes cluster of this test binary. Everything it keeps is
// under dir, except what the kubelet insists on writing elsewhere (see host_test.go).
type cluster struct {
	Kubeconfig string                // an admin kubeconfig (client cert, O=system:masters)
	Context    string                // the context name in it
	Namespace  string                // made for the tests, with its "default" ServiceAccount
	Registry   string                // host:port of a plain-HTTP OCI registry on 127.0.0.1
	HostIP     string                // the pod bridge's gateway: pods reach the host there
	Client     *kubernetes.Clientset // client-go on Kubeconfig
	Containerd string                // the cluster's containerd socket

	dir      string
	host     *hostState
	pki      *pki
	ports    ports
	registry *http.Server
	daemons  map[string]*daemon // by name: etcd, containerd, kube-apiserver, kubelet, kube-scheduler, kube-controller-manager, kube-router
	order    []string           // daemon names in start order
}

const (
	contextName  = "moatc-test"
	nodeName     = "localhost" // the kubelet rejects a loopback node IP; see kubernetes.md
	serviceCIDR  = "10.96.0.0/24"
	serviceIP    = "10.96.0.1" // the first service IP: the apiserver's "kubernetes" Service
	startTimeout = 2 * time.Minute
)

var (
	clusterOnce sync.Once
	theCluster  *cluster // set as soon as a start began, so teardown stops a half-started one
	prereqErr   error    // a prerequisite is missing: skip outside CI
	startErr    error    // the start failed: every later needCluster fails the same way
)

// needCluster returns the cluster, starting it on the first call.
func needCluster(t *testing.T) *cluster {
	t.Helper()
	clusterOnce.Do(func() {
		if prereqErr = checkPrerequisites(); prereqErr != nil {
			return
		}
		begin := time.Now()
		startErr = startCluster()
		if startErr == nil {
			fmt.Fprintf(os.Stderr, "kube e2e: cluster ready in %s (%s)\n", time.Since(begin).Round(100*time.Millisecond), theCluster.dir)
		}
	})
	switch {
	case prereqErr != nil && inCI():
		t.Fatalf("prerequisite missing in CI: %v", prereqErr)
	case prereqErr != nil:
		t.Skipf("prerequisite missing (not CI, so skipping): %v", prereqErr)
	case startErr != nil:
		t.Fatalf("starting the cluster: %v", startErr)
	}
	return theCluster
}

// startCluster starts everything, overlapping the slow waits: etcd and containerd start
// together, the kubelet and the scheduler while the apiserver comes up.
func startCluster() error {
	if err := sweepStale(); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("/tmp", dirPrefix)
	if err != nil {
		return err
	}
	c := &cluster{dir: dir, Context: contextName, HostIP: podGateway, daemons: map[string]*daemon{}}
	theCluster = c
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	steps := []struct {
		what string
		fn   func(context.Context) error
	}{
		{"recording the host's state", func(context.Context) error { return c.recordHost() }},
		{"making certificates", func(context.Context) error { return c.makePKI() }},
		{"starting the registry", func(context.Context) error { return c.startRegistry() }},
		{"making the pod bridge", func(context.Context) error { return makeBridge() }},
		{"starting etcd", c.startEtcd},
		{"starting containerd", c.startContainerd},
		{"starting kube-apiserver", c.startAPIServer},
		{"waiting for containerd", c.waitContainerd},
		{"watching containerd", c.recordContainers},
		{"importing the pause image", c.importPause},
		{"starting the kubelet", c.startKubelet},
		{"starting kube-scheduler", c.startScheduler},
		{"starting kube-controller-manager", c.startControllerManager},
		{"waiting for kube-apiserver", c.waitAPIServer},
		{"making the test objects", c.makeObjects},
		{"waiting for the node", c.waitNodeReady},
		{"starting kube-router", c.startKubeRouter},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w (logs: %s)", s.what, err, filepath.Join(dir, "logs"))
		}
	}
	return nil
}

// makeObjects makes what a controller-manager would otherwise provide, and the tests' own:
// the gvisor RuntimeClass, the namespace, its default ServiceAccount and its
// kube-root-ca.crt ConfigMap (every projected service account token volume mounts it).
func (c *cluster) makeObjects(ctx context.Context) error {
	rc := &nodev1.RuntimeClass{ObjectMeta: metav1.ObjectMeta{Name: "gvisor"}, Handler: "gvisor"}
	if _, err := c.Client.NodeV1().RuntimeClasses().Create(ctx, rc, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("creating RuntimeClass gvisor: %w", err)
	}
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "moatc-test-"},
	}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating the test namespace: %w", err)
	}
	c.Namespace = ns.Name
	// kube-controller-manager makes them, as on any cluster; pods cannot be admitted before.
	return waitUntil(ctx, "kube-controller-manager to make the namespace's default ServiceAccount and kube-root-ca.crt",
		c.daemons["kube-controller-manager"], func(ctx context.Context) error {
			if _, err := c.Client.CoreV1().ServiceAccounts(c.Namespace).Get(ctx, "default", metav1.GetOptions{}); err != nil {
				return err
			}
			_, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
			return err
		})
}

// waitNodeReady waits for the kubelet's node to be Ready and schedulable: admission taints a
// new node not-ready, and kube-controller-manager's node lifecycle controller lifts the taint.
func (c *cluster) waitNodeReady(ctx context.Context) error {
	return waitUntil(ctx, "the node to be Ready and untainted", c.daemons["kube-controller-manager"], func(ctx context.Context) error {
		node, err := c.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if !nodeReady(node) {
			return errors.New("node not Ready yet")
		}
		if len(node.Spec.Taints) > 0 {
			return fmt.Errorf("node tainted: %v", node.Spec.Taints)
		}
		return nil
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// newClient makes the clientset of the admin kubeconfig.
func (c *cluster) newClient() error {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("loading %s: %w", c.Kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c.Client, err = kubernetes.NewForConfig(cfg)
	return err
}

// path names a file or directory of the cluster.
func (c *cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.dir}, elem...)...)
}
