package ctrd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/moatc/moatc/rootless"
)

// ProbeError says a runtime's binaries exist but a container could not run with them.
type ProbeError struct {
	Runtime  string
	Platform string
	Err      error
}

func (e *ProbeError) Error() string {
	fix := "reinstall with `make setup`; `moatc doctor` checks each part of the stack"
	if e.Platform != "" && e.Platform != "systrap" {
		fix = "the gVisor platform " + e.Platform + " does not work on this host: use the default (systrap) by dropping --sandbox-platform"
	}
	if e.Runtime == "gvisor" {
		fix += "; to run without the sandbox (reduced isolation): moatc run --no-sandbox"
	}
	return fmt.Sprintf("a probe container under %s failed on this host: %v\n%s", e.Runtime, e.Err, fix)
}

func (e *ProbeError) Unwrap() error { return e.Err }

// Probe runs `/bin/sh -c 'exit 0'` from img under rt, with no IO, and checks it exits 0.
func (c *Client) Probe(ctx context.Context, rt Runtime, img containerd.Image, snapshotter string) (err error) {
	defer func() {
		if pe, ok := err.(*ProbeError); ok {
			if g, ok := rt.(GVisor); ok {
				pe.Platform = g.Platform
			}
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	id := "moatc-probe-" + rt.Name() + "-" + fmt.Sprint(time.Now().UnixNano())
	ctr, err := c.CreateContainer(ctx, Container{
		ID: id, RunID: "probe", Role: "probe", Image: img, Snapshotter: snapshotter, Runtime: rt,
		Args: []string{"/bin/sh", "-c", "exit 0"}, Hostname: "probe", Rootless: rootless.Enabled(),
	})
	if err != nil {
		return &ProbeError{Runtime: rt.Name(), Err: err}
	}
	defer c.RemoveContainer(context.WithoutCancel(ctx), id)
	task, err := ctr.NewTask(ctx, cio.NullIO)
	if err != nil {
		return &ProbeError{Runtime: rt.Name(), Err: err}
	}
	defer func() {
		if err != nil && task.Pid() > 0 {
			// A sandbox that never came up (gVisor's kvm platform in a VM spins at start)
			// answers no runtime request: kill its process from the host so the shim reaps it.
			syscall.Kill(int(task.Pid()), syscall.SIGKILL)
		}
	}()
	wait, err := task.Wait(ctx)
	if err == nil {
		err = task.Start(ctx)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("it did not start within 20s: %w", err)
	}
	if err != nil {
		return &ProbeError{Runtime: rt.Name(), Err: err}
	}
	select {
	case st := <-wait:
		if code, _, err := st.Result(); err != nil || code != 0 {
			return &ProbeError{Runtime: rt.Name(), Err: fmt.Errorf("it exited %d (%v), want 0", code, err)}
		}
	case <-ctx.Done():
		return &ProbeError{Runtime: rt.Name(), Err: fmt.Errorf("it did not finish within 20s")}
	}
	return nil
}

// BinariesKey identifies the exact binaries a runtime uses (path, size, modification time),
// so a probe result can be cached until they change.
func BinariesKey(prefix string, names ...string) string {
	h := sha256.New()
	for _, n := range names {
		p, err := findBinary(prefix, n)
		if err != nil {
			fmt.Fprintf(h, "%s missing\n", n)
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		fmt.Fprintf(h, "%s %d %d\n", p, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
