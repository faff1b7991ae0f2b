// Package ctrd is moatc's side of containerd: connecting to it (or starting a managed daemon),
// images, containers, tasks, runtimes and the labels that let moatc find what it created.
package ctrd

import (
	"context"
	"fmt"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/moatc/moatc/daemon"
)

// Labels on everything moatc creates, so a crash leaves nothing that cannot be found again.
const (
	LabelRunID = "moatc.run-id"
	LabelRole  = "moatc.role"
	// RoleWorkload is the run's main container.
	RoleWorkload = "workload"
	// RolePool is a warm pool's idle gVisor sandbox, booted ahead of the run that takes it.
	RolePool = "pool"
	// DefaultNamespace is the containerd namespace moatc works in.
	DefaultNamespace = "moatc"
)

// Options say which containerd to use.
type Options struct {
	Address   string  // an existing containerd; empty means the managed one
	Namespace string  // containerd namespace; empty means DefaultNamespace
	Daemon    *Daemon // the managed daemon, used when Address is empty
}

// Client is a containerd client bound to moatc's namespace.
type Client struct {
	*containerd.Client
	Address   string
	Namespace string
	Managed   bool
}

// NotAnsweringError is returned when a given containerd does not answer.
type NotAnsweringError struct {
	Address string
	Err     error
}

func (e *NotAnsweringError) Error() string {
	return fmt.Sprintf("containerd at %s is not answering (%v): check that it runs, or drop --address/MOATC_CONTAINERD_ADDRESS so moatc starts its own", e.Address, e.Err)
}

func (e *NotAnsweringError) Unwrap() error { return e.Err }

// Connect connects to the given containerd, or to the managed one, starting it if needed.
func Connect(ctx context.Context, o Options) (*Client, error) {
	ns := o.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	addr, managed := o.Address, o.Address == ""
	if managed {
		if err := o.Daemon.Start(ctx); err != nil {
			return nil, err
		}
		addr = o.Daemon.Address()
	} else if !daemon.Answering(addr) {
		return nil, &NotAnsweringError{Address: addr, Err: fmt.Errorf("nothing accepts connections on the socket")}
	}
	c, err := containerd.New(addr, containerd.WithDefaultNamespace(ns), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return nil, &NotAnsweringError{Address: addr, Err: err}
	}
	return &Client{Client: c, Address: addr, Namespace: ns, Managed: managed}, nil
}
