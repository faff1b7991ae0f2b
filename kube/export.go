package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

// Redacted stands for a secret value in exported manifests: export never prints a grant.
const Redacted = "REDACTED: moatc kube run fills this in"

// ExportOptions are `moatc kube export`'s own flags.
type ExportOptions struct {
	Namespace    string
	RuntimeClass string
	Registry     string // names the images as `kube run --registry` pushes them
	Prefix       string // where moatc-pod is installed (the helper image's name is its digest)
}

// Export builds a run's objects without a cluster or containerd: what `kube run` would
// create, but with the grants' values and the CA key redacted, the images named where
// --registry would put them, and the image's own CA roots left out of the bundle.
func Export(m *run.Manager, req run.Request, o ExportOptions) (*Objects, []string, error) {
	if err := Check(req.Spec); err != nil {
		return nil, nil, err
	}
	if o.RuntimeClass == "" {
		o.RuntimeClass = DefaultRuntimeClass
	}
	image := req.Spec.Image
	if req.Deps != nil {
		_, _, tag, err := run.Plan(*req.Deps)
		if err != nil {
			return nil, nil, err
		}
		if image, err = builder.ImageName(tag); err != nil {
			return nil, nil, err
		}
	}
	image, err := ctrd.Normalize(image)
	if err != nil {
		return nil, nil, err
	}
	var notes []string
	helper := "moatc/pod:TAG"
	if bin, err := HelperBinary(o.Prefix); err == nil {
		if _, tag, err := helperImage(bin); err == nil {
			helper = "moatc/pod:" + tag
		}
	}
	if o.Registry != "" {
		if image, err = RegistryRef(o.Registry, image); err != nil {
			return nil, nil, err
		}
		helper = o.Registry + "/" + helper
		notes = append(notes, fmt.Sprintf("the images are named as `moatc kube run --registry %s` pushes them", o.Registry))
	} else {
		notes = append(notes, "the images are named as in moatc's store: a cluster pulls them only from a registry (see --registry)")
	}
	id := state.NewID()
	in := Input{ID: id, Name: pick(req.Name, "moatc-"+id[:4]), Namespace: o.Namespace, RuntimeClass: o.RuntimeClass,
		Spec: req.Spec, Image: image, Helper: helper}
	if req.Spec.Network != state.NetworkNone {
		pc, err := proxyConfig(m, req.Spec)
		if err != nil {
			return nil, nil, err
		}
		for i := range pc.Credentials {
			h := map[string]string{}
			for k := range pc.Credentials[i].Headers {
				h[k] = Redacted
			}
			pc.Credentials[i].Headers = h
		}
		pc.CAKey = Redacted
		in.Proxy, in.Bundle = pc, []byte(pc.CACert)
		notes = append(notes, "the proxy's Secret has its grants' values and CA key redacted; the CA bundle holds the run's CA alone (kube run adds the image's roots)")
	}
	objs, err := Build(in)
	return objs, notes, err
}

// Encode writes objects as YAML documents, or as a JSON v1 List.
func Encode(objs []runtime.Object, format string, notes []string) ([]byte, error) {
	var b bytes.Buffer
	switch format {
	case "json":
		list := map[string]any{"apiVersion": "v1", "kind": "List", "items": objs}
		out, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return nil, err
		}
		b.Write(append(out, '\n'))
	case "yaml", "":
		fmt.Fprintf(&b, "# moatc kube export, %s\n", time.Now().UTC().Format(time.RFC3339))
		for _, n := range notes {
			fmt.Fprintf(&b, "# %s\n", n)
		}
		for _, o := range objs {
			out, err := yaml.Marshal(o)
			if err != nil {
				return nil, err
			}
			b.WriteString("---\n")
			b.Write(bytes.ReplaceAll(out, []byte("  creationTimestamp: null\n"), nil))
		}
	default:
		return nil, fmt.Errorf("-o %s: give yaml or json", format)
	}
	return b.Bytes(), nil
}

// Remote stops and removes cluster runs for the run manager (see run.Remote).
type Remote struct{}

func targetOf(r *state.Run) Target {
	return Target{Kubeconfig: r.Kube.Kubeconfig, Context: r.Kube.Context, Namespace: r.Kube.Namespace}
}

// Stop deletes the run's workload pod with grace: the workload gets SIGTERM, then SIGKILL.
func (Remote) Stop(ctx context.Context, r *state.Run, grace int64) error {
	cl, err := Connect(ctx, targetOf(r))
	if err != nil {
		return err
	}
	err = cl.Client.CoreV1().Pods(cl.Namespace).Delete(ctx, r.Kube.Pod, metav1.DeleteOptions{GracePeriodSeconds: &grace})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("stopping pod %s: %w", r.Kube.Pod, err)
	}
	return nil
}

// Destroy removes everything the run made on its cluster.
func (Remote) Destroy(ctx context.Context, r *state.Run) error {
	cl, err := Connect(ctx, targetOf(r))
	if err != nil {
		return err
	}
	return Remove(ctx, cl, r.ID, 60*time.Second)
}

var _ run.Remote = Remote{}
