package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// stop stops the cluster the way a node is drained: pods deleted and the kubelet left to tear
// them down (CNI DEL, volumes, cgroups), then the daemons. Whatever remains after that is
// killed and removed, and reported as an error if it is still there.
func (c *cluster) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var errs []error
	if err := c.drainPods(ctx); err != nil {
		errs = append(errs, err)
	}
	c.daemons["kubelet"].stop(15 * time.Second)
	if err := c.removeTasks(ctx); err != nil {
		errs = append(errs, err)
	}
	for i := len(c.order) - 1; i >= 0; i-- {
		c.daemons[c.order[i]].stop(10 * time.Second)
	}
	if c.registry != nil {
		c.registry.Close()
	}
	keep := len(errs) > 0 || startErr != nil // the logs explain it
	if err := cleanHost(c.dir, c.host, keep); err != nil {
		errs = append(errs, fmt.Errorf("cleaning up: %w", err))
	}
	if l := leaks(c.dir, c.host, keep); len(l) > 0 {
		errs = append(errs, fmt.Errorf("left behind: %s", strings.Join(l, "; ")))
	}
	if len(errs) > 0 {
		errs = append(errs, fmt.Errorf("logs kept in %s", c.path("logs")))
	}
	return errors.Join(errs...)
}

// drainPods deletes every pod and waits until the kubelet has torn them all down: gone from
// the API, no task running in the CRI's namespace, no pod directory left.
func (c *cluster) drainPods(ctx context.Context) error {
	api, kubelet := c.daemons["kube-apiserver"], c.daemons["kubelet"]
	if c.Client == nil || api == nil || kubelet == nil || api.exited() || kubelet.exited() {
		return nil
	}
	pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("listing pods: %w", err)
	}
	// Zero would remove them from the API at once, without waiting for the kubelet.
	grace := int64(1)
	for _, p := range pods.Items {
		err := c.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &grace})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("deleting pod %s/%s: %w", p.Namespace, p.Name, err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	return waitUntil(wctx, "the kubelet to remove every pod", kubelet, func(ctx context.Context) error {
		pods, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Errorf("%d pods left, e.g. %s/%s", n, pods.Items[0].Namespace, pods.Items[0].Name)
		}
		if n, err := c.liveTasks(ctx); err != nil || n > 0 {
			return fmt.Errorf("%d tasks running (%v)", n, err)
		}
		if dirs, _ := os.ReadDir(c.path("kubelet", "pods")); len(dirs) > 0 {
			return fmt.Errorf("%d pod directories left", len(dirs))
		}
		return nil
	})
}

// withCRI calls fn with a client of the cluster's containerd in the CRI's namespace, when
// that containerd is running.
func (c *cluster) withCRI(ctx context.Context, fn func(context.Context, *containerd.Client) error) error {
	if d := c.daemons["containerd"]; d == nil || d.exited() {
		return nil
	}
	client, err := containerd.New(c.Containerd, containerd.WithTimeout(5*time.Second))
	if err != nil {
		return err
	}
	defer client.Close()
	return fn(namespaces.WithNamespace(ctx, criNamespace), client)
}

// liveTasks counts the tasks in the CRI's namespace that have not stopped.
func (c *cluster) liveTasks(ctx context.Context) (int, error) {
	n := 0
	err := c.withCRI(ctx, func(ctx context.Context, client *containerd.Client) error {
		ctrs, err := client.Containers(ctx)
		if err != nil {
			return err
		}
		for _, ctr := range ctrs {
			task, err := ctr.Task(ctx, nil)
			if err != nil {
				continue // no task: nothing runs
			}
			if st, err := task.Status(ctx); err == nil && st.Status != containerd.Stopped {
				n++
			}
		}
		return nil
	})
	return n, err
}

// removeTasks kills and deletes the tasks the kubelet left (a drain that failed), so their
// rootfs mounts and shims go before containerd does.
func (c *cluster) removeTasks(ctx context.Context) error {
	return c.withCRI(ctx, func(ctx context.Context, client *containerd.Client) error {
		ctrs, err := client.Containers(ctx)
		if err != nil {
			return fmt.Errorf("listing containers: %w", err)
		}
		var errs []error
		for _, ctr := range ctrs {
			task, err := ctr.Task(ctx, nil)
			if err != nil {
				continue
			}
			if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil {
				errs = append(errs, fmt.Errorf("deleting task %s: %w", ctr.ID(), err))
			}
		}
		return errors.Join(errs...)
	})
}
