// Package kube runs moatc's runs on a Kubernetes cluster: the same spec a local run has,
// turned into a workload Pod under a gVisor RuntimeClass, a proxy Pod that alone holds the
// grants, and NetworkPolicies that keep the workload to the proxy.
package kube

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/moatc/moatc/kube/podconf"
	"github.com/moatc/moatc/state"
)

// Labels every object moatc makes on a cluster carries, as local containers do.
const (
	LabelRunID     = "moatc.run-id"
	LabelRole      = "moatc.role"
	labelManagedBy = "app.kubernetes.io/managed-by"

	RoleWorkload = "workload"
	RoleProxy    = "proxy"

	// WorkloadContainer is the workload's container in its pod.
	WorkloadContainer = "workload"
	// syncContainer holds the workspace after the workload ends, for the copy back.
	syncContainer = "moatc-sync"
	// copyInContainer waits for the workspace before the workload starts.
	copyInContainer = "moatc-copy-in"

	// ProxyPort is where the proxy pod listens.
	ProxyPort = podconf.ProxyPort

	workspaceDir = "/workspace"
	// stateDir is the helpers' own volume: the copy's ready mark, the hold's release mark.
	stateDir     = "/moatc"
	readyMark    = stateDir + "/ready"
	doneMark     = stateDir + "/done"
	attachedMark = stateDir + "/attached"
	// gateBin is the helper as the copy-in container installs it for the workload's gate.
	gateBin = stateDir + "/bin/moatc-pod"
	// helperBin is the helper image's one binary (cmd/moatc-pod).
	helperBin = "/moatc-pod"

	proxyConfigDir  = "/etc/moatc-proxy"
	proxyConfigFile = "config.json"

	// The run's CA, as a local run has it (run.CAPath, run.BundlePath).
	caDir      = "/etc/moatc"
	caFile     = "ca.pem"
	bundleFile = "ca-bundle.pem"
)

// dockerCaps is Docker's default capability set, what a local run's workload has.
var dockerCaps = []corev1.Capability{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW",
	"SETGID", "SETUID", "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// ProxyConfig is the proxy pod's config (see podconf).
type ProxyConfig = podconf.ProxyConfig

// Input is a run, resolved, as the cluster will run it.
type Input struct {
	ID, Name     string
	Namespace    string
	RuntimeClass string
	Spec         state.Spec
	Image        string // the workload's image, as the cluster pulls it
	Helper       string // the moatc-pod image, as the cluster pulls it
	// Proxy is the proxy's config; nil for a run without a network.
	Proxy *ProxyConfig
	// Bundle is the image's own roots plus the run's CA (PEM); BundleAt is the image's bundle
	// path, which it replaces ("" when the image has none).
	Bundle   []byte
	BundleAt string
	// ProxyHost is the address the workload reaches the proxy at: the proxy pod's IP once
	// known (no cluster DNS or kube-proxy needed), else the proxy Service's name.
	ProxyHost string
}

// Objects are a run's objects on the cluster.
type Objects struct {
	Secret   *corev1.Secret    // the proxy's config, grants included; nil without a proxy
	CA       *corev1.ConfigMap // the run's CA certificate and bundle (public); nil without a proxy
	Policies []*netv1.NetworkPolicy
	Proxy    *corev1.Pod
	Service  *corev1.Service
	Pod      *corev1.Pod
}

// List gives the objects in the order they are created: the proxy's before the workload's.
func (o *Objects) List() []runtime.Object {
	var l []runtime.Object
	if o.Secret != nil {
		l = append(l, o.Secret)
	}
	if o.CA != nil {
		l = append(l, o.CA)
	}
	for _, p := range o.Policies {
		l = append(l, p)
	}
	if o.Proxy != nil {
		l = append(l, o.Proxy, o.Service)
	}
	return append(l, o.Pod)
}

// PodName is the workload pod's name; the other objects' names start with it.
func PodName(id string) string { return "moatc-" + id }

// ProxyName names the proxy's Pod, Service and Secret.
func ProxyName(id string) string { return PodName(id) + "-proxy" }

func labels(id, role string) map[string]string {
	return map[string]string{LabelRunID: id, LabelRole: role, labelManagedBy: "moatc"}
}

// UnsupportedError is a run setting a cluster cannot give as a local run has it.
type UnsupportedError struct{ What, Instead string }

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("a cluster run cannot have %s: %s", e.What, e.Instead)
}

// Check refuses, before anything is made, what a cluster run cannot do as a local one does.
func Check(s state.Spec) error {
	switch {
	case len(s.Mounts) > 0:
		return &UnsupportedError{"host mounts (-m, moatc.yaml mounts)", "the pod cannot see this machine's files; put them in the workspace, which is copied in"}
	case len(s.Publish) > 0:
		return &UnsupportedError{"published ports (-p)", "drop -p; reach the pod with kubectl port-forward while it runs (--keep)"}
	case len(s.HostPorts) > 0:
		return &UnsupportedError{"host ports (--host-port)", "the pod's host is a cluster node; drop --host-port"}
	case s.Docker != "":
		return &UnsupportedError{"a Docker engine (docker:" + s.Docker + ")", "drop the docker dependency, or run locally"}
	case s.Interactive || s.TTY:
		return &UnsupportedError{"stdin or a TTY (-i, -t)", "drop -i/-t; a cluster run's output is streamed, its input is EOF"}
	case s.Init:
		return &UnsupportedError{"--init", "moatc's tini is on this machine, not in the image; drop --init or put an init in the image"}
	case s.Detach:
		return &UnsupportedError{"-d", "drop -d; use --keep to leave the pod on the cluster"}
	case s.Runtime == state.Runc:
		return &UnsupportedError{"--no-sandbox", "a cluster run's isolation is its RuntimeClass: drop --no-sandbox, and give --runtime-class NAME for another"}
	}
	if _, _, err := numericUser(s.User); err != nil {
		return err
	}
	return nil
}

// numericUser parses UID[:GID]: a pod's security context takes numbers only.
func numericUser(u string) (uid, gid *int64, err error) {
	if u == "" {
		return nil, nil, nil
	}
	us, gs, hasG := strings.Cut(u, ":")
	n, err := strconv.ParseInt(us, 10, 64)
	if err != nil || n < 0 {
		return nil, nil, &UnsupportedError{"the user " + u, "a pod runs as numbers: give -u UID[:GID]"}
	}
	uid = &n
	if hasG {
		g, err := strconv.ParseInt(gs, 10, 64)
		if err != nil || g < 0 {
			return nil, nil, &UnsupportedError{"the user " + u, "a pod runs as numbers: give -u UID[:GID]"}
		}
		gid = &g
	}
	return uid, gid, nil
}

// Build turns a run into its cluster objects. Spec must have passed Check.
func Build(in Input) (*Objects, error) {
	if err := Check(in.Spec); err != nil {
		return nil, err
	}
	o := &Objects{}
	if in.Proxy != nil {
		var err error
		if o.Secret, err = proxySecret(in); err != nil {
			return nil, err
		}
		o.CA = caConfigMap(in)
		o.Proxy, o.Service = proxyPod(in), proxyService(in)
	}
	pod, err := workloadPod(in)
	if err != nil {
		return nil, err
	}
	o.Pod = pod
	o.Policies = policies(in)
	return o, nil
}

func meta(in Input, name, role string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: in.Namespace, Labels: labels(in.ID, role)}
}

func proxySecret(in Input) (*corev1.Secret, error) {
	b, err := json.Marshal(in.Proxy)
	if err != nil {
		return nil, fmt.Errorf("encoding the proxy's config: %w", err)
	}
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: meta(in, ProxyName(in.ID), RoleProxy),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{proxyConfigFile: b},
	}, nil
}

func caConfigMap(in Input) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(in, PodName(in.ID)+"-ca", RoleWorkload),
		Data:       map[string]string{caFile: in.Proxy.CACert, bundleFile: string(in.Bundle)},
	}
}

func ptr[T any](v T) *T { return &v }

// helperSecurity is the helpers' confinement: root for the workspace's owners and modes, no
// other privilege.
func helperSecurity() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsUser: ptr(int64(0)), RunAsGroup: ptr(int64(0)),
		AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
		Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"},
			Add: []corev1.Capability{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID"}},
	}
}

func proxyPod(in Input) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: meta(in, ProxyName(in.ID), RoleProxy),
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr(false),
			EnableServiceLinks:            ptr(false),
			TerminationGracePeriodSeconds: ptr(int64(2)),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr(int64(65534)), RunAsGroup: ptr(int64(65534)), RunAsNonRoot: ptr(true), FSGroup: ptr(int64(65534)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name: "proxy", Image: in.Helper, Command: []string{helperBin, "proxy", path.Join(proxyConfigDir, proxyConfigFile)},
				Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: ProxyPort, Protocol: corev1.ProtocolTCP}},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "config", MountPath: proxyConfigDir, ReadOnly: true}},
				Resources:    smallResources(),
			}},
			Volumes: []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: ProxyName(in.ID), DefaultMode: ptr(int32(0o440)),
			}}}},
		},
	}
}

func smallResources() corev1.ResourceRequirements {
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("32Mi")},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")},
	}
}

func proxyService(in Input) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(in, ProxyName(in.ID), RoleProxy),
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{LabelRunID: in.ID, LabelRole: RoleProxy},
			Ports:    []corev1.ServicePort{{Name: "proxy", Port: ProxyPort, TargetPort: intstr.FromInt32(ProxyPort), Protocol: corev1.ProtocolTCP}},
		},
	}
}

// ProxyEnv is what the workload gets to use the proxy, as a local run's (run.egress.env).
func ProxyEnv(secret, host string) []corev1.EnvVar {
	u := fmt.Sprintf("http://moatc:%s@%s:%d", secret, host, ProxyPort)
	noProxy := "localhost,127.0.0.1,::1"
	ca, bundle := path.Join(caDir, caFile), path.Join(caDir, bundleFile)
	var env []corev1.EnvVar
	for _, kv := range [][2]string{
		{"HTTP_PROXY", u}, {"HTTPS_PROXY", u}, {"http_proxy", u}, {"https_proxy", u},
		{"NO_PROXY", noProxy}, {"no_proxy", noProxy},
		{"SSL_CERT_FILE", bundle}, {"REQUESTS_CA_BUNDLE", bundle}, {"CURL_CA_BUNDLE", bundle},
		{"GIT_SSL_CAINFO", bundle}, {"NODE_EXTRA_CA_CERTS", ca},
	} {
		env = append(env, corev1.EnvVar{Name: kv[0], Value: kv[1]})
	}
	return env
}

var dnsLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// hostname makes a run's name a DNS label, as a pod's hostname must be.
func hostname(name string) string {
	h := strings.Trim(dnsLabel.ReplaceAllString(strings.ToLower(name), "-"), "-")
	if len(h) > 63 {
		h = strings.Trim(h[:63], "-")
	}
	if h == "" {
		h = "moatc"
	}
	return h
}

func workloadPod(in Input) (*corev1.Pod, error) {
	s := in.Spec
	uid, gid, err := numericUser(s.User)
	if err != nil {
		return nil, err
	}
	wsMount := corev1.VolumeMount{Name: "workspace", MountPath: workspaceDir, ReadOnly: s.WorkspaceRO}
	sec := &corev1.SecurityContext{
		RunAsUser: uid, RunAsGroup: gid, AllowPrivilegeEscalation: ptr(false),
		ReadOnlyRootFilesystem: ptr(s.ReadOnly),
		Capabilities:           &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: append([]corev1.Capability(nil), dockerCaps...)},
	}
	if uid != nil && *uid != 0 {
		sec.RunAsNonRoot = ptr(true)
	}
	for _, c := range s.CapAdd {
		sec.Capabilities.Add = append(sec.Capabilities.Add, corev1.Capability(strings.TrimPrefix(c, "CAP_")))
	}
	ctr := corev1.Container{
		// The gate holds the command until moatc is attached to its output, then execs it.
		Name: WorkloadContainer, Image: in.Image, Command: append([]string{gateBin, "gate", attachedMark, "--"}, s.Command...),
		WorkingDir: s.Workdir, SecurityContext: sec,
		// Stdin only so that moatc knows when it is attached (see follow); it is closed then.
		Stdin: true, StdinOnce: true,
		VolumeMounts: []corev1.VolumeMount{wsMount, {Name: "moatc", MountPath: stateDir, ReadOnly: true}},
		Resources:    limits(s),
	}
	if ctr.WorkingDir == "" {
		ctr.WorkingDir = workspaceDir
	}
	for _, kv := range s.Env {
		k, v, _ := strings.Cut(kv, "=")
		ctr.Env = append(ctr.Env, corev1.EnvVar{Name: k, Value: v})
	}
	vols := []corev1.Volume{
		{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "moatc", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
	}
	if in.Proxy != nil {
		host := in.ProxyHost
		if host == "" {
			host = ProxyName(in.ID)
		}
		ctr.Env = append(ctr.Env, ProxyEnv(in.Proxy.Secret, host)...)
		ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: "ca", MountPath: caDir, ReadOnly: true})
		if in.BundleAt != "" {
			ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: "ca", MountPath: in.BundleAt, SubPath: bundleFile, ReadOnly: true})
		}
		vols = append(vols, corev1.Volume{Name: "ca", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: PodName(in.ID) + "-ca"}, DefaultMode: ptr(int32(0o444)),
		}}})
	}
	for i, t := range s.Tmpfs {
		name := fmt.Sprintf("tmpfs-%d", i)
		ed := &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}
		for _, opt := range t.Options {
			if v, ok := strings.CutPrefix(opt, "size="); ok {
				if q, err := resource.ParseQuantity(strings.ToUpper(strings.TrimSuffix(v, "b")) + "i"); err == nil {
					ed.SizeLimit = &q
				}
			}
		}
		vols = append(vols, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: ed}})
		ctr.VolumeMounts = append(ctr.VolumeMounts, corev1.VolumeMount{Name: name, MountPath: t.Path})
	}
	grace := int64(10)
	if s.StopTimeout != nil {
		grace = int64(*s.StopTimeout)
	}
	helperMounts := []corev1.VolumeMount{{Name: "workspace", MountPath: workspaceDir}, {Name: "moatc", MountPath: stateDir}}
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: meta(in, PodName(in.ID), RoleWorkload),
		Spec: corev1.PodSpec{
			RuntimeClassName:              ptr(in.RuntimeClass),
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  ptr(false),
			EnableServiceLinks:            ptr(false),
			Hostname:                      hostname(pick(s.Hostname, in.Name)),
			TerminationGracePeriodSeconds: &grace,
			SecurityContext: &corev1.PodSecurityContext{
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			InitContainers: []corev1.Container{{
				Name: copyInContainer, Image: in.Helper, Command: []string{helperBin, "init", stateDir},
				SecurityContext: helperSecurity(), VolumeMounts: helperMounts, Resources: smallResources(),
			}},
			Containers: []corev1.Container{ctr, {
				Name: syncContainer, Image: in.Helper, Command: []string{helperBin, "wait", doneMark},
				SecurityContext: helperSecurity(), VolumeMounts: helperMounts, Resources: smallResources(),
			}},
			Volumes: vols,
		},
	}
	if len(s.Labels) > 0 {
		pod.Annotations = map[string]string{}
		for k, v := range s.Labels {
			pod.Annotations["moatc.label/"+k] = v
		}
	}
	return pod, nil
}

func pick(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// limits are the run's memory and CPU limits, requested as well: what a local run is
// promised, the scheduler must find.
func limits(s state.Spec) corev1.ResourceRequirements {
	l := corev1.ResourceList{}
	if s.Memory > 0 {
		l[corev1.ResourceMemory] = *resource.NewQuantity(s.Memory, resource.BinarySI)
	}
	if s.CPUs > 0 {
		l[corev1.ResourceCPU] = *resource.NewMilliQuantity(int64(s.CPUs*1000+0.5), resource.DecimalSI)
	}
	if len(l) == 0 {
		return corev1.ResourceRequirements{}
	}
	return corev1.ResourceRequirements{Limits: l, Requests: l.DeepCopy()}
}

// policies keep a strict run's workload to its proxy, and a run without a network to itself.
// A permissive run has none: like a local one, it may reach anything directly too.
func policies(in Input) []*netv1.NetworkPolicy {
	strict := in.Proxy != nil && in.Proxy.Strict
	if in.Proxy != nil && !strict {
		return nil
	}
	work := &netv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: meta(in, PodName(in.ID), RoleWorkload),
		Spec: netv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{LabelRunID: in.ID, LabelRole: RoleWorkload}},
			PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeIngress, netv1.PolicyTypeEgress},
		},
	}
	if in.Proxy == nil {
		return []*netv1.NetworkPolicy{work} // no rule: nothing in, nothing out
	}
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(ProxyPort)
	proxySel := &metav1.LabelSelector{MatchLabels: map[string]string{LabelRunID: in.ID, LabelRole: RoleProxy}}
	workSel := &metav1.LabelSelector{MatchLabels: map[string]string{LabelRunID: in.ID, LabelRole: RoleWorkload}}
	work.Spec.Egress = []netv1.NetworkPolicyEgressRule{{
		To:    []netv1.NetworkPolicyPeer{{PodSelector: proxySel}},
		Ports: []netv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
	}}
	px := &netv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: "networking.k8s.io/v1", Kind: "NetworkPolicy"},
		ObjectMeta: meta(in, ProxyName(in.ID), RoleProxy),
		Spec: netv1.NetworkPolicySpec{
			PodSelector: *proxySel,
			PolicyTypes: []netv1.PolicyType{netv1.PolicyTypeIngress, netv1.PolicyTypeEgress},
			Ingress: []netv1.NetworkPolicyIngressRule{{
				From:  []netv1.NetworkPolicyPeer{{PodSelector: workSel}},
				Ports: []netv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}},
			}},
			Egress: proxyEgress(in.Proxy.Allow),
		},
	}
	return []*netv1.NetworkPolicy{work, px}
}

// proxyEgress lets the proxy reach the allowed hosts. A NetworkPolicy knows addresses, not
// names: hosts given as addresses are allowed alone; names need DNS and any address but the
// link-local range (cloud metadata), the proxy itself checking the name.
func proxyEgress(allow []string) []netv1.NetworkPolicyEgressRule {
	var peers []netv1.NetworkPolicyPeer
	names := false
	for _, a := range allow {
		host := a
		if h, _, ok := strings.Cut(strings.TrimPrefix(a, "["), "]:"); ok {
			host = h
		} else if h, p, ok := strings.Cut(a, ":"); ok && !strings.Contains(p, ":") {
			host = h
		}
		host = strings.Trim(host, "[]")
		if ip, ok := addrCIDR(host); ok {
			peers = append(peers, netv1.NetworkPolicyPeer{IPBlock: &netv1.IPBlock{CIDR: ip}})
		} else {
			names = true
		}
	}
	if names {
		udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
		dns := intstr.FromInt32(53)
		return []netv1.NetworkPolicyEgressRule{
			{Ports: []netv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}}},
			{To: []netv1.NetworkPolicyPeer{
				{IPBlock: &netv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{"169.254.0.0/16"}}},
				{IPBlock: &netv1.IPBlock{CIDR: "::/0", Except: []string{"fe80::/10"}}},
			}},
		}
	}
	if len(peers) == 0 {
		return nil
	}
	return []netv1.NetworkPolicyEgressRule{{To: peers}}
}

// addrCIDR is host as a one-address CIDR, when it is an address.
func addrCIDR(host string) (string, bool) {
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "", false
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String(), true
}
