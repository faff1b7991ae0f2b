package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
)

type result struct {
	stdout, stderr string
	code           int
}

// moatcRun runs the moatc under test with args.
func moatcRun(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, moatc, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("moatc %v: %v", args, err)
	}
	return result{out.String(), errb.String(), code}
}

var (
	busyboxOnce sync.Once
	busyboxErr  error
	debianOnce  sync.Once
	debianErr   error
)

// needDebian imports debian:bookworm-slim, the base of dependency images (see needBusybox).
func needDebian(t *testing.T) {
	t.Helper()
	needBusybox(t) // makes the tars
	debianOnce.Do(func() {
		if out, err := exec.Command(moatc, "image", "import", filepath.Join(prefix, "images", "debian-bookworm-slim.oci.tar")).CombinedOutput(); err != nil {
			debianErr = fmt.Errorf("importing debian: %v: %s", err, out)
		}
	})
	if debianErr != nil {
		t.Fatal(debianErr)
	}
}

// needBusybox imports the suite's busybox image into moatc's store (scripts/base-images.sh
// makes the tar; make test makes it before the tests).
func needBusybox(t *testing.T) {
	t.Helper()
	busyboxOnce.Do(func() {
		cmd := exec.Command("bash", filepath.Join(repo, "scripts/base-images.sh"), "--tars-only")
		cmd.Env = append(os.Environ(), "MOATC="+moatc)
		if out, err := cmd.CombinedOutput(); err != nil {
			busyboxErr = fmt.Errorf("making the base image tars: %v: %s", err, out)
			return
		}
		if out, err := exec.Command(moatc, "image", "import", filepath.Join(prefix, "images", "busybox.oci.tar")).CombinedOutput(); err != nil {
			busyboxErr = fmt.Errorf("importing busybox: %v: %s", err, out)
		}
	})
	if busyboxErr != nil {
		t.Fatal(busyboxErr)
	}
}

// kubeArgs are the flags every cluster run of the tests takes.
func kubeArgs(c *cluster, sub string, extra ...string) []string {
	return append([]string{"kube", sub, "--kubeconfig", c.Kubeconfig, "--context", c.Context, "-n", c.Namespace,
		"--registry", c.Registry, "--image", "busybox"}, extra...)
}

// runObjects lists what carries the label moatc.run-id in the test namespace, as kind/name.
func runObjects(t *testing.T, c *cluster) []string {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: "moatc.run-id"}
	var left []string
	core := c.Client.CoreV1()
	if l, err := core.Pods(c.Namespace).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			left = append(left, "pod/"+o.Name)
		}
	} else {
		t.Fatal(err)
	}
	if l, err := core.Services(c.Namespace).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			left = append(left, "service/"+o.Name)
		}
	}
	if l, err := core.Secrets(c.Namespace).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			left = append(left, "secret/"+o.Name)
		}
	}
	if l, err := core.ConfigMaps(c.Namespace).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			left = append(left, "configmap/"+o.Name)
		}
	}
	if l, err := c.Client.NetworkingV1().NetworkPolicies(c.Namespace).List(ctx, sel); err == nil {
		for _, o := range l.Items {
			left = append(left, "networkpolicy/"+o.Name)
		}
	}
	return left
}

// TestKubeRun: a command runs in a gVisor pod, with the workspace copied in and its changes
// copied back, stdout and stderr apart, its exit code returned; nothing stays behind.
func TestKubeRun(t *testing.T) {
	c := needCluster(t)
	needBusybox(t)
	ws := t.TempDir()
	os.WriteFile(filepath.Join(ws, "in.txt"), []byte("from the host\n"), 0o644)
	os.WriteFile(filepath.Join(ws, "gone.txt"), []byte("delete me\n"), 0o644)
	os.Mkdir(filepath.Join(ws, "sub"), 0o755)
	os.WriteFile(filepath.Join(ws, "sub", "keep.txt"), []byte("kept\n"), 0o644)
	// The workload runs as the workspace's owner, as a local run does.
	filepath.Walk(ws, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, 1000, 1000) })
	script := `cat in.txt; echo to-stderr >&2; id -u; dmesg | grep -m1 -o gVisor; ls /var/run/secrets 2>&1;
echo written-in-pod > new.txt; rm gone.txt; mkdir -p made/deep; echo deep > made/deep/f; exit 7`
	r := moatcRun(t, "", append(kubeArgs(c, "run", "--name", "kube-basic"), ws, "--", "sh", "-c", script)...)
	if r.code != 7 {
		t.Fatalf("exit %d, want 7\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("moatc's stderr:\n%s", r.stderr)
	for _, want := range []string{"from the host\n", "1000\n", "gVisor\n", "No such file or directory"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "to-stderr") || !strings.Contains(r.stderr, "to-stderr\n") {
		t.Errorf("stderr was not kept apart:\nstdout: %s\nstderr: %s", r.stdout, r.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "new.txt")); err != nil || string(b) != "written-in-pod\n" {
		t.Errorf("new.txt came back as %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(ws, "made", "deep", "f")); err != nil || string(b) != "deep\n" {
		t.Errorf("made/deep/f came back as %q, %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(ws, "new.txt")); err == nil && fi.Sys().(*syscall.Stat_t).Uid != 1000 {
		t.Errorf("new.txt is owned by %d, want the workload's 1000", fi.Sys().(*syscall.Stat_t).Uid)
	}
	if _, err := os.Stat(filepath.Join(ws, "gone.txt")); !os.IsNotExist(err) {
		t.Errorf("gone.txt was deleted in the pod but is still here (%v)", err)
	}
	if b, _ := os.ReadFile(filepath.Join(ws, "sub", "keep.txt")); string(b) != "kept\n" {
		t.Errorf("sub/keep.txt is %q", b)
	}
	if left := runObjects(t, c); len(left) > 0 {
		t.Errorf("left on the cluster: %v", left)
	}
	// The run is recorded: list shows where it ran, logs has its output.
	l := moatcRun(t, "", "list")
	if !strings.Contains(l.stdout, "kube-basic") || !strings.Contains(l.stdout, "kube:"+c.Context+"/"+c.Namespace) {
		t.Errorf("list:\n%s", l.stdout)
	}
	lg := moatcRun(t, "", "logs", "kube-basic")
	if !strings.Contains(lg.stdout, "from the host") || !strings.Contains(lg.stderr, "to-stderr") {
		t.Errorf("logs: stdout %q stderr %q", lg.stdout, lg.stderr)
	}
	var rec struct {
		State    string `json:"state"`
		ExitCode *int   `json:"exit_code"`
		Kube     *struct{ Context, Namespace, Pod string }
	}
	st := moatcRun(t, "", "status", "--json", "kube-basic")
	if err := json.Unmarshal([]byte(st.stdout), &rec); err != nil || rec.ExitCode == nil || *rec.ExitCode != 7 || rec.Kube == nil || rec.Kube.Namespace != c.Namespace {
		t.Errorf("status: %v %s", err, st.stdout)
	}
	if d := moatcRun(t, "", "destroy", "kube-basic"); d.code != 0 {
		t.Errorf("destroy: %s", d.stderr)
	}
}

// fakeAPI is an HTTPS server on the host, reachable from pods at the cluster's HostIP, that
// answers 200 only to the grant's token.
type fakeAPI struct {
	url, caFile, token string
	mu                 sync.Mutex
	auths              []string
}

func newFakeAPI(t *testing.T, c *cluster) *fakeAPI {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake api"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP(c.HostIP)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	api := &fakeAPI{caFile: filepath.Join(t.TempDir(), "api-ca.pem"), token: "tok-" + fmt.Sprint(time.Now().UnixNano())}
	os.WriteFile(api.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	ln, err := net.Listen("tcp4", c.HostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			api.mu.Lock()
			api.auths = append(api.auths, r.Header.Get("Authorization"))
			api.mu.Unlock()
			if r.Header.Get("Authorization") != "Bearer "+api.token {
				http.Error(w, "no-grant", http.StatusUnauthorized)
				return
			}
			fmt.Fprint(w, "granted")
		}),
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	api.url = "https://" + ln.Addr().String() + "/v1/me"
	return api
}

// buildFetch puts a static HTTP client in dir (testdata/fetch).
func buildFetch(t *testing.T, dir string) {
	t.Helper()
	b := exec.Command("go", "build", "-o", filepath.Join(dir, "fetch"), "./e2e/kube/testdata/fetch")
	b.Dir, b.Env = repo, append(os.Environ(), "CGO_ENABLED=0")
	if out, err := b.CombinedOutput(); err != nil {
		t.Fatalf("building fetch: %v: %s", err, out)
	}
}

// TestKubeGrantStaysInTheProxy: a grant reaches the API through the proxy pod, while no
// object the workload's pod can read holds the token: its spec, its env, its volumes, the
// ConfigMaps of the namespace, and what the workload itself can see.
func TestKubeGrantStaysInTheProxy(t *testing.T) {
	c := needCluster(t)
	needBusybox(t)
	api := newFakeAPI(t, c)
	if r := moatcRun(t, api.token+"\n", "grant", "add", "fakeapi", "--host", c.HostIP, "--header", "Authorization: Bearer {{token}}"); r.code != 0 {
		t.Fatalf("grant add: %s", r.stderr)
	}
	ws := t.TempDir()
	buildFetch(t, ws)
	t.Cleanup(func() { moatcRun(t, "", "destroy", "--force", "kube-grant") })
	// The workload looks for the token everywhere it can.
	// The token is passed encoded: the pod's own spec must not hold it.
	// Without the proxy's password the workload gets nothing through it (the proxy pod
	// admits any address: the password is what keeps other pods out).
	script := fmt.Sprintf(`HTTPS_PROXY=$(echo "$HTTPS_PROXY" | sed 's|moatc:[^@]*@||') ./fetch %[1]s | sed 's/^/nopass: /'; ./fetch %[1]s; env; cat /etc/moatc/*; ls -R /var/run/secrets /run/secrets 2>&1;
grep -rl "$(echo %[2]s | base64 -d)" /etc /workspace /tmp /moatc /var/run /run 2>/dev/null; true`, api.url, base64.StdEncoding.EncodeToString([]byte(api.token)))
	r := moatcRun(t, "", append(kubeArgs(c, "run", "--name", "kube-grant", "--keep", "--grant", "fakeapi", "--policy", "strict",
		"--upstream-ca", api.caFile), ws, "--", "sh", "-c", script)...)
	if r.code != 0 || !strings.Contains(r.stdout, api.url+": 200 granted") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stdout, "nopass: "+api.url+": error") {
		t.Errorf("a request without the proxy's password was not refused:\n%s", r.stdout)
	}
	if strings.Contains(r.stdout, api.token) || strings.Contains(r.stderr, api.token) {
		t.Errorf("the token reached the workload or moatc's output:\n%s\n%s", r.stdout, r.stderr)
	}
	// The test cluster's policy engine is a host process, not a DaemonSet moatc can see: it warns.
	if !strings.Contains(r.stderr, "may not enforce them") {
		t.Errorf("no warning about NetworkPolicy enforcement:\n%s", r.stderr)
	}
	api.mu.Lock()
	auths := append([]string(nil), api.auths...)
	api.mu.Unlock()
	if len(auths) != 1 || auths[0] != "Bearer "+api.token {
		t.Errorf("the API saw %q", auths)
	}
	// Kept (--keep): inspect what the workload's pod could read.
	ctx := context.Background()
	pods, err := c.Client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "moatc.role=workload"})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("workload pods: %v %d", err, len(pods.Items))
	}
	pod := pods.Items[0]
	b, _ := json.Marshal(pod)
	if strings.Contains(string(b), api.token) {
		t.Errorf("the workload pod's object holds the token")
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("the workload pod mounts a service account token")
	}
	for _, v := range pod.Spec.Volumes {
		if v.Secret != nil || v.Projected != nil {
			t.Errorf("the workload pod mounts %s: %+v", v.Name, v.VolumeSource)
		}
		if v.ConfigMap != nil {
			cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cb, _ := json.Marshal(cm)
			if strings.Contains(string(cb), api.token) {
				t.Errorf("configmap %s holds the token", cm.Name)
			}
		}
	}
	for _, ctr := range append(pod.Spec.Containers, pod.Spec.InitContainers...) {
		for _, e := range ctr.Env {
			if e.ValueFrom != nil {
				t.Errorf("container %s takes env %s from %+v", ctr.Name, e.Name, e.ValueFrom)
			}
		}
		for _, ef := range ctr.EnvFrom {
			t.Errorf("container %s takes env from %+v", ctr.Name, ef)
		}
	}
	// The token is on the cluster only in the proxy's Secret, mounted by the proxy pod alone.
	secrets, _ := c.Client.CoreV1().Secrets(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "moatc.run-id"})
	holders := 0
	for _, s := range secrets.Items {
		for _, v := range s.Data {
			if strings.Contains(string(v), api.token) {
				holders++
			}
		}
	}
	if holders != 1 {
		t.Errorf("%d secrets hold the token, want 1 (the proxy's)", holders)
	}
	// A strict run has the NetworkPolicies that keep the workload to the proxy.
	nps, _ := c.Client.NetworkingV1().NetworkPolicies(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "moatc.run-id"})
	if len(nps.Items) != 2 {
		t.Errorf("%d network policies, want 2", len(nps.Items))
	}
	// clean keeps a kept run's record: it is how its objects are found and removed.
	if cr := moatcRun(t, "", "clean"); cr.code != 0 {
		t.Fatalf("clean: %s", cr.stderr)
	}
	if st := moatcRun(t, "", "status", "kube-grant"); st.code != 0 {
		t.Errorf("clean removed the record of a run kept on the cluster: %s", st.stderr)
	}
	if d := moatcRun(t, "", "destroy", "kube-grant"); d.code != 0 {
		t.Fatalf("destroy: %s %s", d.stdout, d.stderr)
	}
	if left := runObjects(t, c); len(left) > 0 {
		t.Errorf("left on the cluster after destroy: %v", left)
	}
	moatcRun(t, "", "revoke", "fakeapi")
}

// TestKubeExportDryRun: what export prints, the API server accepts (server-side dry run), and
// it holds no grant.
func TestKubeExportDryRun(t *testing.T) {
	c := needCluster(t)
	if r := moatcRun(t, "secret-export-token\n", "grant", "add", "exportapi", "--host", "api.example.com", "--header", "Authorization: Bearer {{token}}"); r.code != 0 {
		t.Fatalf("grant add: %s", r.stderr)
	}
	defer moatcRun(t, "", "revoke", "exportapi")
	for _, format := range []string{"yaml", "json"} {
		args := []string{"kube", "export", "-n", c.Namespace, "--registry", c.Registry, "--image", "busybox", "--grant", "exportapi", "--policy", "strict", "-o", format, t.TempDir(), "--", "echo", "hi"}
		r := moatcRun(t, "", args...)
		if r.code != 0 {
			t.Fatalf("export -o %s: exit %d: %s", format, r.code, r.stderr)
		}
		if strings.Contains(r.stdout, "secret-export-token") {
			t.Fatalf("export printed the grant:\n%s", r.stdout)
		}
		objs := decodeAll(t, format, r.stdout)
		kinds := map[string]int{}
		for _, o := range objs {
			kinds[o.GetObjectKind().GroupVersionKind().Kind]++
			if err := dryRun(c, o); err != nil {
				t.Errorf("-o %s: the API server refused %s: %v", format, o.GetObjectKind().GroupVersionKind().Kind, err)
			}
		}
		if kinds["Pod"] != 2 || kinds["Service"] != 1 || kinds["Secret"] != 1 || kinds["ConfigMap"] != 1 || kinds["NetworkPolicy"] != 2 {
			t.Errorf("-o %s: kinds %v", format, kinds)
		}
	}
	if left := runObjects(t, c); len(left) > 0 {
		t.Errorf("a dry run left %v", left)
	}
}

func decodeAll(t *testing.T, format, out string) []runtime.Object {
	t.Helper()
	dec := scheme.Codecs.UniversalDeserializer()
	var docs []string
	if format == "json" {
		var list struct{ Items []json.RawMessage }
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatal(err)
		}
		for _, it := range list.Items {
			docs = append(docs, string(it))
		}
	} else {
		for _, d := range strings.Split(out, "\n---\n") {
			if strings.Contains(d, "kind:") {
				docs = append(docs, d)
			}
		}
	}
	var objs []runtime.Object
	for _, d := range docs {
		o, _, err := dec.Decode([]byte(d), nil, nil)
		if err != nil {
			t.Fatalf("decoding %s: %v", d, err)
		}
		objs = append(objs, o)
	}
	return objs
}

func dryRun(c *cluster, o runtime.Object) error {
	ctx, ns := context.Background(), c.Namespace
	opts := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	var err error
	switch v := o.(type) {
	case *corev1.Pod:
		_, err = c.Client.CoreV1().Pods(ns).Create(ctx, v, opts)
	case *corev1.Service:
		_, err = c.Client.CoreV1().Services(ns).Create(ctx, v, opts)
	case *corev1.Secret:
		_, err = c.Client.CoreV1().Secrets(ns).Create(ctx, v, opts)
	case *corev1.ConfigMap:
		_, err = c.Client.CoreV1().ConfigMaps(ns).Create(ctx, v, opts)
	default:
		if np, ok := o.(interface{ GetName() string }); ok && o.GetObjectKind().GroupVersionKind().Kind == "NetworkPolicy" {
			_ = np
			b, _ := json.Marshal(o)
			res := c.Client.NetworkingV1().RESTClient().Post().Namespace(ns).Resource("networkpolicies").Param("dryRun", "All").Body(b).Do(ctx)
			err = res.Error()
		} else {
			err = fmt.Errorf("unexpected object %T", o)
		}
	}
	return err
}

// TestKubeFailsClearly: what cannot work is refused before anything is created, saying what
// to do.
func TestKubeFailsClearly(t *testing.T) {
	c := needCluster(t)
	needBusybox(t)
	ws := t.TempDir()
	// The same credentials, for a server that is not there.
	bad := filepath.Join(t.TempDir(), "unreachable.kubeconfig")
	kc, err := clientcmd.LoadFromFile(c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range kc.Clusters {
		cl.Server = "https://127.0.0.1:1"
	}
	if err := clientcmd.WriteToFile(*kc, bad); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"no kubeconfig", []string{"kube", "run", "--kubeconfig", "/nonexistent/kubeconfig", "--registry", c.Registry, "--image", "busybox", ws, "--", "true"},
			[]string{"reading the kubeconfig", "--kubeconfig"}},
		{"unreachable", []string{"kube", "run", "--kubeconfig", bad, "--registry", c.Registry, "--image", "busybox", ws, "--", "true"},
			[]string{"reaching the cluster", "kubectl"}},
		{"no runtime class", append(kubeArgs(c, "run", "--runtime-class", "nosuchclass"), ws, "--", "true"),
			[]string{`no RuntimeClass "nosuchclass"`, "kind: RuntimeClass", "--runtime-class"}},
		{"image not pullable", []string{"kube", "run", "--kubeconfig", c.Kubeconfig, "-n", c.Namespace, "--image", "busybox", ws, "--", "true"},
			[]string{"cannot pull docker.io/library/busybox:latest", "--registry"}},
		{"host mount", append(kubeArgs(c, "run", "-m", "/etc:/host-etc"), ws, "--", "true"),
			[]string{"cannot have host mounts"}},
	} {
		r := moatcRun(t, "", tc.args...)
		if r.code == 0 {
			t.Errorf("%s: succeeded", tc.name)
		}
		for _, w := range tc.want {
			if !strings.Contains(r.stderr, w) {
				t.Errorf("%s: stderr lacks %q:\n%s", tc.name, w, r.stderr)
			}
		}
		if left := runObjects(t, c); len(left) > 0 {
			t.Errorf("%s: left %v", tc.name, left)
		}
	}
}

// TestKubeStop: `moatc stop` of a running cluster run deletes its pod; the foreground moatc
// reports the end, and the cluster is left clean. Ctrl-C does the same.
func TestKubeStop(t *testing.T) {
	c := needCluster(t)
	needBusybox(t)
	for _, how := range []string{"stop", "interrupt"} {
		name := "kube-" + how
		cmd := exec.Command(moatc, append(kubeArgs(c, "run", "--name", name, "--stop-timeout", "2"), t.TempDir(), "--", "sh", "-c", "echo started; sleep 300")...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for !strings.Contains(out.String(), "started") && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if !strings.Contains(out.String(), "started") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%s: the run did not start: %s", how, errb.String())
		}
		if how == "stop" {
			if r := moatcRun(t, "", "stop", name); r.code != 0 {
				t.Errorf("stop: %s", r.stderr)
			}
		} else {
			cmd.Process.Signal(os.Interrupt)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%s: moatc did not end: %s", how, errb.String())
		}
		if code := cmd.ProcessState.ExitCode(); code != 137 && code != 143 {
			t.Errorf("%s: exit %d, want 137 or 143 (SIGTERM then SIGKILL to sh as PID 1)\n%s", how, code, errb.String())
		}
		if left := runObjects(t, c); len(left) > 0 {
			t.Errorf("%s: left %v", how, left)
		}
		moatcRun(t, "", "destroy", name)
	}
}

// TestKubeRunDependencyImage: a workspace that declares dependencies runs on the cluster in
// the image moatc builds for them, pushed to the registry with the run.
func TestKubeRunDependencyImage(t *testing.T) {
	c := needCluster(t)
	needDebian(t)
	ws := t.TempDir()
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies:\n  - jq\n"), 0o644)
	r := moatcRun(t, "", "kube", "run", "--kubeconfig", c.Kubeconfig, "-n", c.Namespace, "--registry", c.Registry, "--quiet",
		ws, "--", "sh", "-c", `echo '{"a":42}' | jq .a`)
	if r.code != 0 || r.stdout != "42\n" {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if left := runObjects(t, c); len(left) > 0 {
		t.Errorf("left on the cluster: %v", left)
	}
}
