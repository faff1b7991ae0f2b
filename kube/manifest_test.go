package kube

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/moatc/moatc/proxy"
	"github.com/moatc/moatc/state"
)

func testInput(strict bool) Input {
	return Input{
		ID: "0123456789ab", Name: "My_Run.1", Namespace: "ns", RuntimeClass: "gvisor",
		Spec: state.Spec{
			Command: []string{"sh", "-c", "echo hi"}, Env: []string{"HOME=/tmp", "A=b=c"}, User: "1000:1000",
			Memory: 512 << 20, CPUs: 1.5, Runtime: state.GVisor, Network: state.NetworkDefault,
			ReadOnly: true, CapAdd: []string{"CAP_NET_ADMIN"},
		},
		Image: "reg/img@sha256:abc", Helper: "reg/moatc/pod:1",
		Proxy: &ProxyConfig{Secret: "proxysecret", Strict: strict, Allow: []string{"api.example.com", "10.1.2.3:443"},
			Credentials: []proxy.Credential{{Grant: "g", Host: "api.example.com", Headers: map[string]string{"Authorization": "Bearer TOKEN-XYZ"}}},
			CACert:      "CERT", CAKey: "KEY"},
		Bundle: []byte("ROOTS\nCERT"), BundleAt: "/etc/ssl/certs/ca-certificates.crt", ProxyHost: "10.0.0.9",
	}
}

// The workload's pod references nothing that holds a grant, gets no service account token,
// and is confined as a local run is.
func TestWorkloadPodHoldsNoSecret(t *testing.T) {
	objs, err := Build(testInput(true))
	if err != nil {
		t.Fatal(err)
	}
	pod := objs.Pod
	b, _ := json.Marshal(pod)
	for _, leak := range []string{"TOKEN-XYZ", "KEY", objs.Secret.Name + `"`} {
		if strings.Contains(string(b), leak) {
			t.Errorf("the workload pod's spec holds %q:\n%s", leak, b)
		}
	}
	if s := string(objs.Secret.Data[proxyConfigFile]); !strings.Contains(s, "TOKEN-XYZ") || !strings.Contains(s, "KEY") {
		t.Errorf("the proxy's secret lacks the grant or the key: %s", s)
	}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil || v.Projected != nil {
			t.Errorf("the workload pod mounts %+v", v)
		}
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("the workload pod gets a service account token")
	}
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		t.Error("the workload pod gets service links")
	}
	if *pod.Spec.RuntimeClassName != "gvisor" || pod.Spec.Hostname != "my-run-1" {
		t.Errorf("runtime class %q hostname %q", *pod.Spec.RuntimeClassName, pod.Spec.Hostname)
	}
	var w *corev1.Container
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == WorkloadContainer {
			w = &pod.Spec.Containers[i]
		}
	}
	sc := w.SecurityContext
	if *sc.RunAsUser != 1000 || *sc.RunAsGroup != 1000 || !*sc.RunAsNonRoot || *sc.AllowPrivilegeEscalation || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("security context %+v", sc)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != len(dockerCaps)+1 || sc.Capabilities.Add[len(dockerCaps)] != "NET_ADMIN" {
		t.Errorf("capabilities %+v", sc.Capabilities)
	}
	if got := strings.Join(w.Command, " "); got != gateBin+" gate "+attachedMark+" -- sh -c echo hi" {
		t.Errorf("command %q", got)
	}
	if w.Resources.Limits.Memory().Value() != 512<<20 || w.Resources.Limits.Cpu().MilliValue() != 1500 {
		t.Errorf("limits %v", w.Resources.Limits)
	}
	env := map[string]string{}
	for _, e := range w.Env {
		env[e.Name] = e.Value
	}
	if env["A"] != "b=c" || env["HTTPS_PROXY"] != "http://moatc:proxysecret@10.0.0.9:3128" || env["SSL_CERT_FILE"] != "/etc/moatc/ca-bundle.pem" {
		t.Errorf("env %v", env)
	}
	var bundleMounted bool
	for _, m := range w.VolumeMounts {
		if m.MountPath == "/etc/ssl/certs/ca-certificates.crt" && m.SubPath == bundleFile && m.ReadOnly {
			bundleMounted = true
		}
		if m.MountPath == stateDir && !m.ReadOnly {
			t.Error("the workload can write the helpers' marks")
		}
	}
	if !bundleMounted {
		t.Errorf("the image's bundle is not replaced: %+v", w.VolumeMounts)
	}
}

// A strict run's workload may reach its proxy alone; its proxy, the allowed hosts. A
// permissive run has no policy; a run without a network, one that admits nothing.
func TestPolicies(t *testing.T) {
	objs, _ := Build(testInput(true))
	if len(objs.Policies) != 2 {
		t.Fatalf("strict: %d policies", len(objs.Policies))
	}
	work := objs.Policies[0]
	if len(work.Spec.Ingress) != 0 || len(work.Spec.Egress) != 1 || work.Spec.Egress[0].To[0].PodSelector.MatchLabels[LabelRole] != RoleProxy ||
		work.Spec.Egress[0].Ports[0].Port.IntValue() != ProxyPort || len(work.Spec.PolicyTypes) != 2 {
		t.Errorf("workload policy %+v", work.Spec)
	}
	px := objs.Policies[1]
	if px.Spec.Ingress[0].From[0].PodSelector.MatchLabels[LabelRole] != RoleWorkload {
		t.Errorf("proxy ingress %+v", px.Spec.Ingress)
	}
	if len(px.Spec.Egress) != 2 || px.Spec.Egress[1].To[0].IPBlock.Except[0] != "169.254.0.0/16" {
		t.Errorf("proxy egress with names %+v", px.Spec.Egress)
	}
	in := testInput(true)
	in.Proxy.Allow = []string{"10.1.2.3:443", "[fd00::1]:8443", "192.168.1.1"}
	objs, _ = Build(in)
	eg := objs.Policies[1].Spec.Egress
	if len(eg) != 1 || len(eg[0].To) != 3 || eg[0].To[0].IPBlock.CIDR != "10.1.2.3/32" || eg[0].To[1].IPBlock.CIDR != "fd00::1/128" {
		t.Errorf("proxy egress with addresses %+v", eg)
	}

	objs, _ = Build(testInput(false))
	if len(objs.Policies) != 0 {
		t.Errorf("permissive: %d policies", len(objs.Policies))
	}
	in = testInput(false)
	in.Proxy, in.Spec.Network = nil, state.NetworkNone
	objs, _ = Build(in)
	if len(objs.Policies) != 1 || len(objs.Policies[0].Spec.Egress) != 0 || objs.Secret != nil || objs.Proxy != nil {
		t.Errorf("network none: %+v", objs)
	}
}

func TestEveryObjectLabelled(t *testing.T) {
	objs, _ := Build(testInput(true))
	if n := len(objs.List()); n != 7 {
		t.Errorf("%d objects, want 7 (secret, configmap, 2 policies, proxy pod, service, pod)", n)
	}
	for _, o := range objs.List() {
		b, _ := json.Marshal(o)
		if !strings.Contains(string(b), `"moatc.run-id":"0123456789ab"`) || !strings.Contains(string(b), `"moatc.role":`) {
			t.Errorf("unlabelled: %s", b)
		}
	}
}

func TestCheckRefuses(t *testing.T) {
	for _, s := range []state.Spec{
		{Mounts: []state.Mount{{Host: "/x", Container: "/y"}}},
		{Publish: []string{"8080:80"}},
		{HostPorts: []string{"8080/tcp"}},
		{Docker: "host"},
		{Interactive: true},
		{Init: true},
		{User: "alice"},
		{User: "1000:staff"},
		{Runtime: state.Runc},
	} {
		var ue *UnsupportedError
		if err := Check(s); !errors.As(err, &ue) {
			t.Errorf("%+v: %v", s, err)
		}
	}
	if err := Check(state.Spec{User: "0:0"}); err != nil {
		t.Error(err)
	}
}

func TestEncode(t *testing.T) {
	objs, _ := Build(testInput(true))
	y, err := Encode(objs.List(), "yaml", []string{"a note"})
	if err != nil || strings.Count(string(y), "\n---\n") != 7 || !strings.Contains(string(y), "# a note") || strings.Contains(string(y), "creationTimestamp") {
		t.Errorf("yaml (%v):\n%s", err, y)
	}
	j, err := Encode(objs.List(), "json", nil)
	var list struct {
		Kind  string
		Items []map[string]any
	}
	if err != nil || json.Unmarshal(j, &list) != nil || list.Kind != "List" || len(list.Items) != 7 {
		t.Errorf("json (%v): %s", err, j)
	}
	if _, err := Encode(nil, "xml", nil); err == nil {
		t.Error("xml accepted")
	}
}
