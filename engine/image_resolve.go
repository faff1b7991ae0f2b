package engine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"

	"github.com/moatc/moatc/ctrd"
)

// resolveImage finds an image of the engine's namespace, unpacked, as Docker takes a
// reference: a name (busybox is docker.io/library/busybox:latest), or an image ID
// ("sha256:..." or a unique prefix of its hex). A missing image is 404 "No such image", the
// answer that makes a client pull.
func (e *Engine) resolveImage(ctx context.Context, ref string) (containerd.Image, error) {
	if ref == "" {
		return nil, invalid("no image given: the container's config needs an Image")
	}
	c := e.cfg.Client
	if id := strings.TrimPrefix(ref, "sha256:"); validIDPrefix.MatchString(id) && (id != ref || len(id) == 64) {
		if img, err := e.imageByID(ctx, id); err == nil || !errdefs.IsNotFound(err) {
			return img, err
		}
	}
	img, err := c.Image(ctx, ref, e.cfg.Snapshotter)
	var nf *ctrd.ImageNotFoundError
	if errors.As(err, &nf) {
		if made, rerr := e.ensureReaperImage(ctx, ref); rerr != nil {
			return nil, rerr
		} else if made {
			return c.Image(ctx, ref, e.cfg.Snapshotter)
		}
	}
	if errors.As(err, &nf) {
		name, nerr := ctrd.Normalize(ref)
		if nerr != nil {
			name = ref
		}
		return nil, notFound("No such image: %s", ctrd.ShortName(name))
	}
	if err != nil && strings.Contains(err.Error(), "is not an image reference") {
		return nil, invalid("invalid reference format: %s", ref)
	}
	return img, err
}

// imageByID finds the image whose ID (its target's digest) starts with hex id.
func (e *Engine) imageByID(ctx context.Context, id string) (containerd.Image, error) {
	imgs, err := e.cfg.Client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	var found []string
	for _, i := range imgs {
		if strings.HasPrefix(i.Target.Digest.Encoded(), id) {
			found = append(found, i.Name)
		}
	}
	if len(found) == 0 {
		return nil, notFound("No such image: %s", id)
	}
	return e.cfg.Client.Image(ctx, found[0], e.cfg.Snapshotter)
}
