package kube

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClusterRunsGVisorPod proves the harness: an image pushed to the registry runs under
// RuntimeClass gvisor (gVisor's kernel answers uname) and under the default runtime (the
// host's kernel does), each pod reaches a server on HostIP, and its log comes back through
// the apiserver and the kubelet.
func TestClusterRunsGVisorPod(t *testing.T) {
	c := needCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := c.Client.NodeV1().RuntimeClasses().Get(ctx, "gvisor", metav1.GetOptions{}); err != nil {
		t.Fatalf("RuntimeClass gvisor: %v", err)
	}
	image := c.pushBusybox(t)
	addr := serveOnHost(t, c.HostIP, "hello from the host")
	var host unix.Utsname
	unix.Uname(&host)
	for _, tc := range []struct {
		runtimeClass string
		release      string // what uname -r must print
	}{
		{"gvisor", "4.19.0-gvisor"},
		{"", unix.ByteSliceToString(host.Release[:])},
	} {
		t.Run("runtime="+tc.runtimeClass, func(t *testing.T) {
			pod := c.runPod(ctx, t, tc.runtimeClass, image, "uname -r; cat /proc/version; wget -q -O - http://"+addr+"/")
			if pod.Status.Phase != corev1.PodSucceeded {
				t.Fatalf("pod %s ended %s: %s", pod.Name, pod.Status.Phase, c.podLog(ctx, t, pod.Name))
			}
			log := c.podLog(ctx, t, pod.Name)
			lines := strings.Split(log, "\n")
			if lines[0] != tc.release {
				t.Errorf("uname -r = %q, want %q\nlog:\n%s", lines[0], tc.release, log)
			}
			if !strings.Contains(log, "hello from the host") {
				t.Errorf("the pod did not reach %s on HostIP; log:\n%s", addr, log)
			}
		})
	}
}

// runPod runs sh -c script in a pod of the test namespace, waits for it to end and returns
// it; the pod is deleted when the test ends.
func (c *cluster) runPod(ctx context.Context, t *testing.T, runtimeClass, image, script string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "proof-"},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers: []corev1.Container{{
				Name: "proof", Image: image, Command: []string{"sh", "-c", script},
			}},
		},
	}
	if runtimeClass != "" {
		pod.Spec.RuntimeClassName = &runtimeClass
	}
	pod, err := c.Client.CoreV1().Pods(c.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating a pod: %v", err)
	}
	t.Cleanup(func() {
		c.Client.CoreV1().Pods(c.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{})
	})
	done, err := c.waitPodDone(ctx, pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	return done
}

// waitPodDone waits for the pod to succeed or fail.
func (c *cluster) waitPodDone(ctx context.Context, name string) (*corev1.Pod, error) {
	var pod *corev1.Pod
	err := waitUntil(ctx, "pod "+name+" to end", c.daemons["kubelet"], func(ctx context.Context) error {
		var err error
		pod, err = c.Client.CoreV1().Pods(c.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return nil
		}
		return fmt.Errorf("phase %s: %s", pod.Status.Phase, podWaiting(pod))
	})
	return pod, err
}

// podWaiting says why a pod's containers are not running yet, for timeouts.
func podWaiting(pod *corev1.Pod) string {
	var why []string
	for _, s := range pod.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			why = append(why, s.Name+": "+w.Reason+" "+w.Message)
		}
	}
	for _, cond := range pod.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			why = append(why, string(cond.Type)+": "+cond.Message)
		}
	}
	return strings.Join(why, "; ")
}

// podLog returns the pod's log through the apiserver (which asks the kubelet).
func (c *cluster) podLog(ctx context.Context, t *testing.T, name string) string {
	t.Helper()
	b, err := c.Client.CoreV1().Pods(c.Namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		t.Fatalf("reading the log of pod %s: %v", name, err)
	}
	return strings.TrimSpace(string(b))
}

// serveOnHost serves body over HTTP on ip (a free port) until the test ends, and returns
// the address.
func serveOnHost(t *testing.T, ip, body string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("listening on %s: %v", ip, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, body)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}
