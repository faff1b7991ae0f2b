package ctrd

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/errdefs"

	"github.com/moatc/moatc/state"
)

// LabelLeaseOwner names the moatc process a lease was made for, as "PID:START" (START is the
// process's start time in clock ticks since boot, so a reused pid is not taken for it).
const LabelLeaseOwner = "moatc.owner"

// leaseExpiry bounds how long a lease of a process that died can hold what it pinned, even
// when no moatc command ever removes it. containerd's own default; longer than any import,
// pull or unpack takes (an expired lease lets containerd's GC take content still in use).
const leaseExpiry = 24 * time.Hour

// OwnedLease returns ctx carrying a new lease owned by this process, and its release. Image
// imports, pulls, unpacks and container creation run under it: containerd's client would
// otherwise make an anonymous lease, which a moatc killed half-way leaves for a day, pinning
// half-extracted snapshots and content. ctx that already carries a lease is returned as is.
func (c *Client) OwnedLease(ctx context.Context) (context.Context, func(), error) {
	if _, ok := leases.FromContext(ctx); ok {
		return ctx, func() {}, nil
	}
	self := state.Self()
	if self == nil {
		return nil, nil, fmt.Errorf("creating a lease: cannot read this process's start time")
	}
	l, err := c.LeasesService().Create(ctx, leases.WithRandomID(), leases.WithExpiration(leaseExpiry),
		leases.WithLabel(LabelLeaseOwner, fmt.Sprintf("%d:%d", self.Pid, self.Start)))
	if err != nil {
		return nil, nil, fmt.Errorf("creating a lease: %w", err)
	}
	return leases.WithLease(ctx, l.ID), func() {
		// Not ctx: a cancelled operation must still give its lease back.
		c.LeasesService().Delete(context.WithoutCancel(ctx), l)
	}, nil
}

// leaseOwner parses LabelLeaseOwner.
func leaseOwner(v string) (*state.Process, bool) {
	pid, start, ok := strings.Cut(v, ":")
	if !ok {
		return nil, false
	}
	p, err := strconv.Atoi(pid)
	if err != nil {
		return nil, false
	}
	s, err := strconv.ParseUint(start, 10, 64)
	if err != nil {
		return nil, false
	}
	return &state.Process{Pid: p, Start: s}, true
}

// AbandonedLeases lists the leases moatc processes made (OwnedLease) whose process is gone:
// what a moatc killed during an import, pull, unpack or container creation left behind.
// Leases of live processes, of any moatc home, are not listed.
func (c *Client) AbandonedLeases(ctx context.Context) ([]string, error) {
	ls, err := c.LeasesService().List(ctx, "labels."+strconv.Quote(LabelLeaseOwner))
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	var out []string
	for _, l := range ls {
		if p, ok := leaseOwner(l.Labels[LabelLeaseOwner]); ok && !p.Alive() {
			out = append(out, l.ID)
		}
	}
	return out, nil
}

// RemoveLease deletes a lease and, before returning, what only it held (containerd's garbage
// collection runs synchronously). A missing lease is not an error.
func (c *Client) RemoveLease(ctx context.Context, id string) error {
	err := c.LeasesService().Delete(ctx, leases.Lease{ID: id}, leases.SynchronousDelete)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("removing lease %s: %w", id, err)
	}
	return nil
}
