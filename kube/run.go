package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/kube/wsync"
	"github.com/moatc/moatc/proxy"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

// Options are `moatc kube run`'s own flags.
type Options struct {
	Target
	RuntimeClass string   // default "gvisor"
	Registry     string   // where the run's images are pushed for the cluster; "" pushes nothing
	Insecure     []string // registries spoken to over plain HTTP besides loopback ones
	Keep         bool     // leave the objects on the cluster
	NoSyncBack   bool     // do not copy the workspace back
	Stdout       io.Writer
	Stderr       io.Writer
	Warn         io.Writer // progress and warnings
}

// DefaultRuntimeClass is the RuntimeClass a run's pod asks for: gVisor's usual name.
const DefaultRuntimeClass = "gvisor"

// ExitError: the workload ended with a non-zero code.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("the workload exited with %d", e.Code) }

// prepared is a run made ready before anything is created on the cluster.
type prepared struct {
	cl  *Cluster
	in  Input
	req run.Request
}

// prepare checks everything that can be checked before the cluster is changed: the spec, the
// cluster and its RuntimeClass, the grants, the images (pushed to the registry when one is
// given). Every error here leaves nothing behind.
func prepare(ctx context.Context, m *run.Manager, req run.Request, o Options) (*prepared, error) {
	if err := Check(req.Spec); err != nil {
		return nil, err
	}
	if o.RuntimeClass == "" {
		o.RuntimeClass = DefaultRuntimeClass
	}
	cl, err := Connect(ctx, o.Target)
	if err != nil {
		return nil, err
	}
	if err := cl.CheckRuntimeClass(ctx, o.RuntimeClass); err != nil {
		return nil, err
	}
	in := Input{Name: req.Name, Namespace: cl.Namespace, RuntimeClass: o.RuntimeClass}
	if req.Spec.Network != state.NetworkNone {
		if in.Proxy, err = proxyConfig(m, req.Spec); err != nil {
			return nil, err
		}
	}
	if in.Proxy == nil || in.Proxy.Strict {
		if eng, err := cl.PolicyEngine(ctx); err != nil {
			fmt.Fprintf(o.Warn, "moatc: warning: this run's egress is held by NetworkPolicies, and the cluster of %s may not enforce them: %v. "+
				"Without an engine the workload's only limit is that it is given the proxy; a workload that ignores HTTPS_PROXY reaches what the pod network reaches. "+
				"Install one (Calico, Cilium, kube-router), or run it locally.\n", cl.Context, err)
		} else {
			fmt.Fprintf(o.Warn, "moatc: NetworkPolicies enforced by %s\n", eng)
		}
	}
	img, bundleAt, roots, err := m.ClusterImage(ctx, &req)
	if err != nil {
		return nil, err
	}
	// The dependency list may have asked for what a cluster cannot give (docker:host).
	if err := Check(req.Spec); err != nil {
		return nil, err
	}
	in.Spec = req.Spec
	if in.Proxy != nil {
		in.Bundle = append(append(roots, '\n'), in.Proxy.CACert...)
		in.BundleAt = bundleAt
	}
	if o.Registry == "" {
		if err := CheckPullable(ctx, img.Name()); err != nil {
			return nil, err
		}
		return nil, &ImageError{"moatc's helper image (moatc-pod)", "it is made by this moatc and is in no registry"}
	}
	bin, err := HelperBinary(m.Prefix)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Warn, "moatc: pushing the run's images to %s\n", o.Registry)
	if in.Helper, err = PushHelper(ctx, bin, o.Registry, o.Insecure); err != nil {
		return nil, err
	}
	dest, err := RegistryRef(o.Registry, img.Name())
	if err != nil {
		return nil, err
	}
	c, err := m.Client(ctx)
	if err != nil {
		return nil, err
	}
	desc, err := c.Push(ctx, img.Name(), dest, ctrd.PushOptions{Insecure: o.Insecure})
	if err != nil {
		return nil, err
	}
	// By digest: the pod runs exactly what was pushed, whatever the tag says later.
	in.Image = dest[:strings.LastIndex(dest, ":")] + "@" + desc.Digest.String()
	return &prepared{cl: cl, in: in, req: req}, nil
}

// proxyConfig is the run's proxy as the proxy pod serves it: the grants' headers, the policy,
// a CA made for this run alone (the home's CA key never leaves this machine).
func proxyConfig(m *run.Manager, s state.Spec) (*ProxyConfig, error) {
	eg, err := m.ResolveEgress(s)
	if err != nil {
		return nil, err
	}
	for _, c := range eg.Credentials {
		if c.Host == "moatc-host" {
			return nil, &UnsupportedError{"a grant for moatc-host (" + c.Grant + ")", "the cluster's pods cannot reach this machine by that name; grant the API's own host"}
		}
	}
	cert, key, err := proxy.GenerateCA()
	if err != nil {
		return nil, err
	}
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	pc := &ProxyConfig{Secret: hex.EncodeToString(b), Strict: eg.Policy.Strict, Credentials: eg.Credentials, CACert: string(cert), CAKey: string(key)}
	for _, p := range eg.Policy.Allow {
		pc.Allow = append(pc.Allow, p.String())
	}
	if s.UpstreamCA != "" {
		ca, err := os.ReadFile(s.UpstreamCA)
		if err != nil {
			return nil, fmt.Errorf("reading the upstream CA bundle: %w", err)
		}
		pc.UpstreamCA = string(ca)
	}
	return pc, nil
}

// Run runs req on the cluster to its end and returns its record and the workload's exit code.
func Run(ctx context.Context, m *run.Manager, req run.Request, o Options) (*state.Run, int, error) {
	if o.Warn == nil {
		o.Warn = os.Stderr
	}
	p, err := prepare(ctx, m, req, o)
	if err != nil {
		return nil, 0, err
	}
	k := &state.Kube{Kubeconfig: o.Kubeconfig, Context: p.cl.Context, Namespace: p.cl.Namespace, Server: p.cl.Server, Keep: o.Keep}
	r, err := m.RecordCluster(p.req, k)
	if err != nil {
		return nil, 0, err
	}
	p.in.ID, p.in.Name = r.ID, r.Name
	x := &execution{p: p, m: m, r: r, o: o}
	code, runErr := x.run(ctx)
	final, err := m.Store.Update(r.ID, func(r *state.Run) error {
		now := time.Now().UTC()
		r.Finished = &now
		switch {
		case x.exited:
			r.State, r.ExitCode = state.Stopped, &code
		case runErr != nil:
			r.State, r.Error = state.Failed, runErr.Error()
		default:
			r.State = state.Stopped
		}
		return nil
	})
	if err == nil {
		r = final
	}
	if r.Spec.Remove && runErr == nil {
		m.Store.Remove(r.ID)
	}
	return r, code, runErr
}

// execution is one run on the cluster, from its first object to its last.
type execution struct {
	p       *prepared
	m       *run.Manager
	r       *state.Run
	o       Options
	exited  bool // the workload's exit code is known
	stopped bool // its pod was deleted (Ctrl-C, moatc stop) before it ended
}

func (x *execution) client() *Cluster { return x.p.cl }

func (x *execution) progress(format string, a ...any) {
	fmt.Fprintf(x.o.Warn, "moatc: "+format+"\n", a...)
}

func (x *execution) run(ctx context.Context) (code int, err error) {
	cl, ns := x.client(), x.p.cl.Namespace
	defer func() {
		if x.o.Keep {
			x.progress("kept on the cluster (--keep): `moatc destroy %s` removes them", x.r.Name)
			return
		}
		if cerr := Remove(context.WithoutCancel(ctx), cl, x.r.ID, 60*time.Second); cerr != nil && err == nil {
			err = cerr
		}
	}()
	objs, err := Build(x.p.in)
	if err != nil {
		return 0, err
	}
	if err := x.start(ctx, objs); err != nil {
		return 0, err
	}
	pod := objs.Pod
	x.progress("pod %s/%s created on %s", ns, pod.Name, cl.Context)
	if err := x.waitContainer(ctx, copyInContainer, true); err != nil {
		return 0, err
	}
	sent, err := x.copyIn(ctx)
	if err != nil {
		return 0, err
	}
	if err := x.waitContainer(ctx, WorkloadContainer, false); err != nil {
		return 0, err
	}
	if err := x.markRunning(); err != nil {
		return 0, err
	}
	code, err = x.follow(ctx)
	if err != nil {
		return code, err
	}
	if x.stopped {
		x.progress("the pod was stopped: the workspace's changes are not copied back")
		return code, nil
	}
	if !x.o.NoSyncBack && !x.r.Spec.WorkspaceRO {
		if err := x.copyBack(ctx, sent); err != nil {
			return code, err
		}
	}
	// The hold ends: the pod completes (what --keep leaves is a finished pod).
	x.exec(ctx, syncContainer, []string{helperBin, "mark", doneMark}, nil, io.Discard)
	return code, nil
}

// start creates the proxy's objects, waits for the proxy pod's address, then the workload's.
func (x *execution) start(ctx context.Context, objs *Objects) error {
	cl, ns := x.client(), x.p.cl.Namespace
	opts := metav1.CreateOptions{FieldManager: "moatc"}
	core := cl.Client.CoreV1()
	var err error
	if objs.Secret != nil {
		if _, err = core.Secrets(ns).Create(ctx, objs.Secret, opts); err != nil {
			return fmt.Errorf("creating secret %s: %w", objs.Secret.Name, err)
		}
		if _, err = core.ConfigMaps(ns).Create(ctx, objs.CA, opts); err != nil {
			return fmt.Errorf("creating configmap %s: %w", objs.CA.Name, err)
		}
	}
	for _, np := range objs.Policies {
		if _, err = cl.Client.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, opts); err != nil {
			return fmt.Errorf("creating networkpolicy %s: %w", np.Name, err)
		}
	}
	if objs.Proxy != nil {
		if _, err = core.Pods(ns).Create(ctx, objs.Proxy, opts); err != nil {
			return fmt.Errorf("creating pod %s: %w", objs.Proxy.Name, err)
		}
		if _, err = core.Services(ns).Create(ctx, objs.Service, opts); err != nil {
			return fmt.Errorf("creating service %s: %w", objs.Service.Name, err)
		}
		ip, err := x.waitProxy(ctx, objs.Proxy.Name)
		if err != nil {
			return err
		}
		x.p.in.ProxyHost = ip
		if objs.Pod, err = workloadPod(x.p.in); err != nil {
			return err
		}
	}
	if _, err = core.Pods(ns).Create(ctx, objs.Pod, opts); err != nil {
		return fmt.Errorf("creating pod %s: %w", objs.Pod.Name, err)
	}
	return nil
}

// waitPod polls a pod until done says it is ready, failing early on what will not pass.
func (x *execution) waitPod(ctx context.Context, podName string, limit time.Duration, done func(*corev1.Pod) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		pod, err := x.client().Client.CoreV1().Pods(x.p.cl.Namespace).Get(ctx, podName, metav1.GetOptions{})
		if err == nil {
			if err := x.stuck(ctx, pod); err != nil {
				return err
			}
			ok, derr := done(pod)
			if derr != nil || ok {
				return derr
			}
		} else if !apierrors.IsNotFound(err) || ctx.Err() != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for pod %s: %s passed (`kubectl -n %s describe pod %s` says why)", podName, limit, x.p.cl.Namespace, podName)
			}
			return fmt.Errorf("waiting for pod %s: %w", podName, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stuck turns a pod that cannot start into an error that says why.
func (x *execution) stuck(ctx context.Context, pod *corev1.Pod) error {
	statuses := append(append([]corev1.ContainerStatus(nil), pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...)
	for _, cs := range statuses {
		w := cs.State.Waiting
		if w == nil {
			continue
		}
		switch w.Reason {
		case "ErrImagePull", "ImagePullBackOff", "InvalidImageName":
			return &ImageError{cs.Image, fmt.Sprintf("pod %s: %s: %s", pod.Name, w.Reason, w.Message)}
		case "CreateContainerConfigError", "CreateContainerError", "RunContainerError":
			return fmt.Errorf("pod %s: container %s: %s: %s", pod.Name, cs.Name, w.Reason, w.Message)
		}
	}
	if pod.Status.Phase == corev1.PodFailed && pod.Status.Reason != "" {
		return fmt.Errorf("pod %s failed: %s: %s", pod.Name, pod.Status.Reason, pod.Status.Message)
	}
	// A sandbox the runtime cannot make shows only in the pod's events.
	if pod.Status.Phase == corev1.PodPending && time.Since(pod.CreationTimestamp.Time) > 5*time.Second {
		evs, err := x.client().Client.CoreV1().Events(pod.Namespace).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.name=" + pod.Name + ",reason=FailedCreatePodSandBox"})
		if err == nil && len(evs.Items) > 0 {
			return fmt.Errorf("pod %s: the node could not make its sandbox with RuntimeClass %s: %s", pod.Name, x.p.in.RuntimeClass, evs.Items[len(evs.Items)-1].Message)
		}
	}
	return nil
}

func (x *execution) waitProxy(ctx context.Context, podName string) (string, error) {
	var ip string
	err := x.waitPod(ctx, podName, 5*time.Minute, func(p *corev1.Pod) (bool, error) {
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("the run's proxy pod %s ended (%s): `kubectl -n %s logs %s` says why", podName, p.Status.Phase, p.Namespace, podName)
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running != nil && p.Status.PodIP != "" {
				ip = p.Status.PodIP
				return true, nil
			}
		}
		return false, nil
	})
	return ip, err
}

// waitContainer waits until container runs (init: an init container).
func (x *execution) waitContainer(ctx context.Context, name string, init bool) error {
	return x.waitPod(ctx, PodName(x.r.ID), 5*time.Minute, func(p *corev1.Pod) (bool, error) {
		statuses := p.Status.ContainerStatuses
		if init {
			statuses = p.Status.InitContainerStatuses
		}
		for _, cs := range statuses {
			if cs.Name != name {
				continue
			}
			if cs.State.Running != nil {
				return true, nil
			}
			if t := cs.State.Terminated; t != nil {
				if init {
					return false, fmt.Errorf("pod %s: %s ended before the workspace was copied in (%s, exit %d): %s", p.Name, name, t.Reason, t.ExitCode, t.Message)
				}
				return true, nil
			}
		}
		if p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded {
			return false, fmt.Errorf("pod %s ended (%s) before %s ran", p.Name, p.Status.Phase, name)
		}
		return false, nil
	})
}

// exec runs argv in container of the run's pod.
func (x *execution) exec(ctx context.Context, container string, argv []string, stdin io.Reader, stdout io.Writer) error {
	return execIn(ctx, x.client(), PodName(x.r.ID), container, argv, stdin, stdout)
}

func execIn(ctx context.Context, cl *Cluster, pod, container string, argv []string, stdin io.Reader, stdout io.Writer) error {
	req := cl.Client.CoreV1().RESTClient().Post().Resource("pods").Name(pod).Namespace(cl.Namespace).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdin: stdin != nil, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := executor(cl, req.URL().String())
	if err != nil {
		return err
	}
	var errb strings.Builder
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: &limitedWriter{w: &errb, n: 4096}})
	if err != nil {
		return fmt.Errorf("running %s in pod %s: %w %s", argv[1], pod, err, strings.TrimSpace(errb.String()))
	}
	return nil
}

// executor speaks WebSocket to the API server, SPDY to one that does not take it.
func executor(cl *Cluster, u string) (remotecommand.Executor, error) {
	parsed, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	ws, err := remotecommand.NewWebSocketExecutor(cl.Config, "GET", u)
	if err != nil {
		return nil, err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cl.Config, "POST", parsed)
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

type limitedWriter struct {
	w io.Writer
	n int
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.n > 0 {
		k := min(len(p), l.n)
		l.w.Write(p[:k])
		l.n -= k
	}
	return len(p), nil
}

// copyIn sends the workspace to the copy-in container, which releases the workload's start.
func (x *execution) copyIn(ctx context.Context) (wsync.Manifest, error) {
	pr, pw := io.Pipe()
	var sent wsync.Manifest
	var sendErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sent, sendErr = wsync.Send(ctx, pw, x.r.Workspace)
		pw.CloseWithError(sendErr)
	}()
	err := x.exec(ctx, copyInContainer, []string{helperBin, "unpack", workspaceDir, readyMark}, pr, io.Discard)
	pr.CloseWithError(io.ErrClosedPipe)
	wg.Wait()
	if sendErr != nil {
		return sent, fmt.Errorf("copying the workspace in: %w", sendErr)
	}
	if err != nil {
		return sent, fmt.Errorf("copying the workspace in: %w", err)
	}
	return sent, nil
}

func (x *execution) markRunning() error {
	_, err := x.m.Store.Update(x.r.ID, func(r *state.Run) error {
		now := time.Now().UTC()
		r.State, r.Started = state.Running, &now
		return nil
	})
	return err
}

// connectedReader tells when the attach's streams are up: the executor reads stdin only then.
// Its EOF closes the workload's stdin (stdinOnce), which a local run's is too.
type connectedReader struct {
	once sync.Once
	c    chan struct{}
}

func (r *connectedReader) Read([]byte) (int, error) {
	r.once.Do(func() { close(r.c) })
	return 0, io.EOF
}

// follow attaches to the workload, lets it start, streams its output to the terminal and the
// run's log, and returns its exit code once it has ended.
func (x *execution) follow(ctx context.Context) (int, error) {
	out, errw, closer, err := x.m.OpenLog(x.r.ID, x.r.Spec.LogMax)
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	stdout, stderr := io.MultiWriter(out, orDiscard(x.o.Stdout)), io.MultiWriter(errw, orDiscard(x.o.Stderr))
	cl := x.client()
	req := cl.Client.CoreV1().RESTClient().Post().Resource("pods").Name(PodName(x.r.ID)).Namespace(cl.Namespace).SubResource("attach").
		VersionedParams(&corev1.PodAttachOptions{Container: WorkloadContainer, Stdin: true, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	ex, err := executor(cl, req.URL().String())
	if err != nil {
		return 0, err
	}
	in := &connectedReader{c: make(chan struct{})}
	attached := make(chan error, 1)
	actx, stopAttach := context.WithCancel(context.WithoutCancel(ctx))
	defer stopAttach()
	go func() {
		attached <- ex.StreamWithContext(actx, remotecommand.StreamOptions{Stdin: in, Stdout: stdout, Stderr: stderr})
	}()
	select {
	case <-in.c:
	case err := <-attached:
		return 0, fmt.Errorf("attaching to the workload: %w", err)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if err := x.exec(ctx, syncContainer, []string{helperBin, "mark", attachedMark}, nil, io.Discard); err != nil {
		return 0, err
	}
	code, err := x.waitExit(ctx)
	if err != nil {
		return code, err
	}
	// The attach ends with the container; its last output may trail the status a little.
	select {
	case <-attached:
	case <-time.After(10 * time.Second):
		fmt.Fprintln(x.o.Warn, "moatc: warning: the workload's output stream did not end with it; its last output may be missing")
	}
	return code, nil
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// waitExit waits for the workload's container to end. Ctrl-C (ctx) deletes the pod, which
// stops it with its grace, and still reports its exit code.
func (x *execution) waitExit(ctx context.Context) (int, error) {
	cl, name := x.client(), PodName(x.r.ID)
	interrupted := false
	for {
		wctx := ctx
		if interrupted {
			wctx = context.Background()
		}
		pod, err := cl.Client.CoreV1().Pods(cl.Namespace).Get(wctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			// Gone before its status said how it ended: it was killed.
			x.stopped, x.exited = true, true
			fmt.Fprintln(x.o.Warn, "moatc: warning: the workload's pod was deleted before its exit code was seen; reporting 137 (killed)")
			return 137, nil
		}
		if err == nil {
			if pod.DeletionTimestamp != nil {
				x.stopped = true
			}
			for _, cs := range pod.Status.ContainerStatuses {
				if cs.Name == WorkloadContainer && cs.State.Terminated != nil {
					x.exited = true
					return int(cs.State.Terminated.ExitCode), nil
				}
			}
		} else if !interrupted && ctx.Err() == nil {
			return 0, fmt.Errorf("watching pod %s: %w", name, err)
		}
		select {
		case <-time.After(250 * time.Millisecond):
		case <-ctx.Done():
			if !interrupted {
				interrupted = true
				x.progress("stopping pod %s", name)
				grace := int64(10)
				if x.r.Spec.StopTimeout != nil {
					grace = int64(*x.r.Spec.StopTimeout)
				}
				cl.Client.CoreV1().Pods(cl.Namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
			}
		}
	}
}

// maxSyncBytes bounds what a pod can send back: it is staged on this machine's disk first.
const maxSyncBytes = 64 << 30

// copyBack brings the workspace's changes home; what the pod sends is the workload's, so it
// is applied without following any link and only within the workspace.
func (x *execution) copyBack(ctx context.Context, sent wsync.Manifest) error {
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := x.exec(ctx, syncContainer, []string{helperBin, "pack", workspaceDir}, nil, pw)
		pw.CloseWithError(err)
		errc <- err
	}()
	res, err := wsync.Receive(ctx, pr, x.r.Workspace, sent, wsync.ReceiveOptions{MaxBytes: maxSyncBytes, KeepOwner: os.Geteuid() == 0})
	pr.CloseWithError(io.ErrClosedPipe)
	if xerr := <-errc; xerr != nil && err == nil {
		err = xerr
	}
	if err != nil {
		return fmt.Errorf("copying the workspace back (nothing was changed in %s): %w", x.r.Workspace, err)
	}
	x.progress("workspace copied back: %d written, %d deleted, %d unchanged", res.Written, res.Deleted, res.Unchanged)
	for _, sk := range res.Skipped {
		fmt.Fprintf(x.o.Warn, "moatc: warning: not copied back: %s: %s\n", sk.Path, sk.Reason)
	}
	return nil
}

// Remove deletes every object of run id in the cluster's namespace and waits for its pods to go.
func Remove(ctx context.Context, cl *Cluster, id string, wait time.Duration) error {
	sel := metav1.ListOptions{LabelSelector: LabelRunID + "=" + id}
	ns, core := cl.Namespace, cl.Client.CoreV1()
	del := metav1.DeleteOptions{}
	var errs []error
	note := func(what string, err error) {
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing the run's %s: %w", what, err))
		}
	}
	note("pods", core.Pods(ns).DeleteCollection(ctx, del, sel))
	// Services have no DeleteCollection on older API servers: one by one.
	if svcs, err := core.Services(ns).List(ctx, sel); err == nil {
		for _, s := range svcs.Items {
			note("service "+s.Name, core.Services(ns).Delete(ctx, s.Name, del))
		}
	} else {
		note("services", err)
	}
	note("secrets", core.Secrets(ns).DeleteCollection(ctx, del, sel))
	note("configmaps", core.ConfigMaps(ns).DeleteCollection(ctx, del, sel))
	note("networkpolicies", cl.Client.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, del, sel))
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		pods, err := core.Pods(ns).List(ctx, sel)
		if err != nil || len(pods.Items) == 0 {
			return err
		}
		time.Sleep(300 * time.Millisecond)
	}
	return fmt.Errorf("the run's pods were deleted but are still on the cluster after %s: `kubectl -n %s get pods -l %s=%s`", wait, ns, LabelRunID, id)
}

func parseURL(u string) (*url.URL, error) {
	p, err := url.Parse(u)
	if err != nil {
		return nil, fmt.Errorf("parsing the API's address %s: %w", u, err)
	}
	return p, nil
}
