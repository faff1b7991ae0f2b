package ctrd

import (
	"context"
	"errors"
	"fmt"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CopyImage makes image ref of namespace from available in the client's namespace, and
// unpacks it for snapshotter. The blobs are copied by reference: containerd's default content
// sharing policy ("shared") commits a blob another namespace holds without its data, so
// nothing is read or written but the metadata. What the source does not hold (other
// platforms' manifests) is left out, as in the source. It returns the image's full name.
func (c *Client) CopyImage(ctx context.Context, from, ref, snapshotter string) (string, error) {
	name, err := Normalize(ref)
	if err != nil {
		return "", err
	}
	src := namespaces.WithNamespace(ctx, from)
	img, err := c.ImageService().Get(src, name)
	if errdefs.IsNotFound(err) {
		return "", &ImageNotFoundError{Ref: ref}
	}
	if err != nil {
		return "", fmt.Errorf("copying image %s: %w", name, err)
	}
	ctx, done, err := c.OwnedLease(ctx)
	if err != nil {
		return "", err
	}
	defer done()
	cs := c.ContentStore()
	copyBlob := images.HandlerFunc(func(_ context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		info, err := cs.Info(src, d.Digest)
		if errdefs.IsNotFound(err) {
			return nil, images.ErrSkipDesc // not in the source either
		}
		if err != nil {
			return nil, err
		}
		if err := shareBlob(ctx, cs, d, info.Labels); err != nil {
			return nil, fmt.Errorf("copying blob %s of image %s: %w", d.Digest, name, err)
		}
		return images.Children(src, cs, d)
	})
	if err := images.Walk(src, copyBlob, img.Target); err != nil {
		return "", fmt.Errorf("copying image %s from namespace %s: %w", name, from, err)
	}
	is := c.ImageService()
	dst := images.Image{Name: img.Name, Target: img.Target, Labels: img.Labels}
	if _, err := is.Create(ctx, dst); errdefs.IsAlreadyExists(err) {
		if _, err := is.Update(ctx, dst, "target", "labels"); err != nil {
			return "", fmt.Errorf("copying image %s: %w", name, err)
		}
	} else if err != nil {
		return "", fmt.Errorf("copying image %s: %w", name, err)
	}
	if err := containerd.NewImage(c.Client, dst).Unpack(ctx, snapshotter); err != nil {
		return "", fmt.Errorf("unpacking image %s: %w", name, err)
	}
	return name, nil
}

// shareBlob commits blob d in ctx's namespace, with the source's labels (they hold the
// garbage collector's references to the blob's children).
func shareBlob(ctx context.Context, cs content.Store, d ocispec.Descriptor, labels map[string]string) error {
	w, err := cs.Writer(ctx, content.WithRef("moatc-copy-"+d.Digest.String()), content.WithDescriptor(d))
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer w.Close()
	err = w.Commit(ctx, d.Size, d.Digest, content.WithLabels(labels))
	if errdefs.IsAlreadyExists(err) {
		return nil
	}
	if err != nil && errors.Is(err, errdefs.ErrFailedPrecondition) {
		// An isolated content policy: the blob's data must be written into this namespace.
		return fmt.Errorf("%w (containerd's content_sharing_policy is not \"shared\")", err)
	}
	return err
}
