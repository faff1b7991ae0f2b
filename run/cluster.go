package run

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/opencontainers/image-spec/identity"

	"github.com/moatc/moatc/snapshot"
	"github.com/moatc/moatc/state"
)

// Remote runs runs elsewhere (a Kubernetes cluster): stop and destroy hand a record with
// Kube set to it. Set by the CLI; nil refuses them.
type Remote interface {
	Stop(ctx context.Context, r *state.Run, grace int64) error
	Destroy(ctx context.Context, r *state.Run) error
}

// ClusterImage readies a cluster run's image in moatc's store (building the dependency image
// when the run declares one; Spec.Image is then set to it) and reads its CA roots: the path
// of the image's bundle ("" when it has none) and the bundle. The cluster gets the same
// trust a local run of the image has.
func (m *Manager) ClusterImage(ctx context.Context, req *Request) (containerd.Image, string, []byte, error) {
	if err := m.dockerMode(req); err != nil {
		return nil, "", nil, err
	}
	c, err := m.Client(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	if req.Deps != nil {
		if req.Spec.Image, _, err = m.BuildImage(ctx, *req.Deps); err != nil {
			return nil, "", nil, err
		}
	}
	img, err := c.Image(ctx, req.Spec.Image, snapshot.Default())
	if err != nil {
		return nil, "", nil, err
	}
	req.Spec.Image = img.Name()
	diffs, err := img.RootFS(ctx)
	if err != nil {
		return nil, "", nil, fmt.Errorf("reading image %s: %w", img.Name(), err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	key := "moatc-roots-" + hex.EncodeToString(b)
	ctx, done, err := c.OwnedLease(ctx)
	if err != nil {
		return nil, "", nil, err
	}
	defer done()
	sn := c.SnapshotService(snapshot.Default())
	if _, err := sn.View(ctx, key, identity.ChainID(diffs).String()); err != nil {
		return nil, "", nil, fmt.Errorf("reading image %s: %w", img.Name(), err)
	}
	defer sn.Remove(context.WithoutCancel(ctx), key)
	at, roots, err := m.imageRoots(ctx, img, key)
	if err != nil {
		return nil, "", nil, err
	}
	return img, at, roots, nil
}

// OpenLog opens run id's log for a writer other than the shim or the supervisor (a cluster
// run's output, as it streams): `moatc logs` reads it as any run's.
func (m *Manager) OpenLog(id string, max int64) (stdout, stderr io.Writer, closer io.Closer, err error) {
	rec, err := newRecorder(m.Store.LogPath(id), max)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("opening the log of run %s: %w", id, err)
	}
	return rec.stream("stdout"), rec.stream("stderr"), rec, nil
}

var errNoRemote = errors.New("this is a cluster run, and this moatc cannot reach clusters")

// stopRemote stops a cluster run: its pod is deleted with grace, and the moatc that runs it
// records its end. When that moatc is gone, the end is recorded here.
func (m *Manager) stopRemote(ctx context.Context, r *state.Run, grace time.Duration) (*state.Run, error) {
	if m.Remote == nil {
		return nil, errNoRemote
	}
	if err := m.Remote.Stop(ctx, r, int64(grace/time.Second)); err != nil {
		return nil, err
	}
	if !r.Supervisor.Alive() {
		return m.Store.Update(r.ID, func(r *state.Run) error {
			if r.Active() {
				now := time.Now().UTC()
				r.State, r.Finished = state.Stopped, &now
			}
			return nil
		})
	}
	return m.awaitEnd(ctx, r)
}

// RecordCluster writes a new cluster run's record (checked as a local run's request is),
// its moatc the supervisor. Its name is free among all runs, local and cluster.
func (m *Manager) RecordCluster(req Request, k *state.Kube) (*state.Run, error) {
	if req.Name != "" && !validName.MatchString(req.Name) {
		return nil, fmt.Errorf("%q is not a valid run name: use letters, digits, '_', '.' and '-', starting with a letter or digit", req.Name)
	}
	id := state.NewID()
	k.Pod = "moatc-" + id
	r := &state.Run{
		ID: id, Name: req.Name, Workspace: req.Workspace, Spec: req.Spec, State: state.Created,
		ContainerID: k.Pod, Namespace: k.Namespace, Address: k.Server, Kube: k,
		Created: time.Now().UTC(), Supervisor: state.Self(),
	}
	if err := m.create(r, req); err != nil {
		return nil, err
	}
	return r, nil
}
