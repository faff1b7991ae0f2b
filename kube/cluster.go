package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Target says which cluster and namespace: the current kubeconfig's unless given.
type Target struct {
	Kubeconfig string // "" is $KUBECONFIG or ~/.kube/config
	Context    string // "" is the kubeconfig's current context
	Namespace  string // "" is the context's namespace, else "default"
}

// Cluster is a connection to one cluster, in one namespace.
type Cluster struct {
	Client    kubernetes.Interface
	Config    *rest.Config
	Context   string // the context's name, as `moatc list` shows it
	Namespace string
	Server    string
}

// NoClusterError: no kubeconfig, or the cluster did not answer.
type NoClusterError struct {
	Target Target
	Err    error
}

func (e *NoClusterError) Error() string {
	where := "the current context"
	if e.Target.Context != "" {
		where = "context " + e.Target.Context
	}
	return fmt.Sprintf("reaching the cluster of %s: %v\nCheck the kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and that `kubectl --context NAME get ns` answers.", where, e.Err)
}

func (e *NoClusterError) Unwrap() error { return e.Err }

// Connect loads the kubeconfig and checks that the cluster answers.
func Connect(ctx context.Context, t Target) (*Cluster, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if t.Kubeconfig != "" {
		if _, err := os.Stat(t.Kubeconfig); err != nil {
			return nil, &NoClusterError{t, fmt.Errorf("reading the kubeconfig: %w", err)}
		}
		rules.ExplicitPath = t.Kubeconfig
	}
	loader := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: t.Context})
	raw, err := loader.RawConfig()
	if err != nil {
		return nil, &NoClusterError{t, fmt.Errorf("reading the kubeconfig: %w", err)}
	}
	cfg, err := loader.ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			err = errors.New("no kubeconfig found (give --kubeconfig FILE, or set KUBECONFIG)")
		}
		return nil, &NoClusterError{t, err}
	}
	ns := t.Namespace
	if ns == "" {
		if ns, _, err = loader.Namespace(); err != nil || ns == "" {
			ns = "default"
		}
	}
	name := t.Context
	if name == "" {
		name = raw.CurrentContext
	}
	cfg.UserAgent = "moatc"
	cfg.Timeout = 0
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, &NoClusterError{t, err}
	}
	c := &Cluster{Client: client, Config: cfg, Context: name, Namespace: ns, Server: cfg.Host}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Get(pctx, ns, metav1.GetOptions{}); err != nil {
		switch {
		case apierrors.IsNotFound(err):
			return nil, fmt.Errorf("namespace %s does not exist on %s: create it (kubectl create namespace %s) or give -n NAMESPACE", ns, name, ns)
		case apierrors.IsForbidden(err):
			// Allowed to work in it without reading it: the objects' own calls will tell.
		default:
			return nil, &NoClusterError{t, err}
		}
	}
	return c, nil
}

// RuntimeClassError: the cluster has no RuntimeClass of the run's name.
type RuntimeClassError struct {
	Name, Context string
	Err           error
}

func (e *RuntimeClassError) Error() string {
	return fmt.Sprintf(`the cluster of %s has no RuntimeClass %q (%v).
A run's pod asks for it so that the workload runs in gVisor; without it the API server refuses the pod.
Install gVisor on the nodes (runsc and containerd-shim-runsc-v1, a containerd runtime handler of
type io.containerd.runsc.v1: see https://gvisor.dev/docs/user_guide/containerd/quick_start/), then:
  kubectl apply -f - <<EOF
  apiVersion: node.k8s.io/v1
  kind: RuntimeClass
  metadata: {name: %s}
  handler: runsc
  EOF
or name the cluster's own gVisor class with --runtime-class NAME.`, e.Context, e.Name, e.Err, e.Name)
}

func (e *RuntimeClassError) Unwrap() error { return e.Err }

// CheckRuntimeClass refuses a RuntimeClass the cluster does not have.
func (c *Cluster) CheckRuntimeClass(ctx context.Context, name string) error {
	_, err := c.Client.NodeV1().RuntimeClasses().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return &RuntimeClassError{Name: name, Context: c.Context, Err: errors.New("not found")}
	}
	if err != nil && !apierrors.IsForbidden(err) {
		return fmt.Errorf("looking up RuntimeClass %s: %w", name, err)
	}
	return nil
}

// policyEngines are the DaemonSets of network plugins that enforce NetworkPolicy.
var policyEngines = []string{"calico-node", "cilium", "antrea-agent", "kube-router", "weave-net", "canal", "kube-ovn-cni", "romana-agent"}

// PolicyEngine names the cluster's NetworkPolicy engine, found by its DaemonSet, or says why
// none was found. An API server stores NetworkPolicies whether anything enforces them or not.
func (c *Cluster) PolicyEngine(ctx context.Context) (string, error) {
	list, err := c.Client.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", fmt.Errorf("listing DaemonSets to find a policy engine: %w", err)
	}
	for _, ds := range list.Items {
		for _, e := range policyEngines {
			if ds.Name == e || strings.HasPrefix(ds.Name, e+"-") {
				return ds.Namespace + "/" + ds.Name, nil
			}
		}
	}
	return "", fmt.Errorf("no DaemonSet of a NetworkPolicy engine (looked for %s in every namespace)", strings.Join(policyEngines, ", "))
}
