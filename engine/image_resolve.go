package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/container"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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

// imageEntry is one image as Docker shows it: a target (its ID is the target's digest, as
// Docker's containerd image store has it) and every name of the namespace that points at it.
type imageEntry struct {
	target ocispec.Descriptor
	names  []images.Image // sorted by name
	spec   ocispec.Image  // the config of the default platform's manifest
	size   int64
	// created is the config's, or the oldest name's when the config has none.
	created time.Time
	labels  map[string]string // the config's
}

func (i *imageEntry) id() string { return i.target.Digest.String() }

// repoTags and repoDigests are the names as Docker shows them: busybox:latest, and
// busybox@sha256:... (the target's digest for each repository).
func (i *imageEntry) repoTags() []string {
	tags := []string{}
	for _, n := range i.names {
		if r, err := reference.ParseNormalizedNamed(n.Name); err == nil {
			if _, ok := r.(reference.Tagged); ok {
				tags = append(tags, reference.FamiliarString(r))
			}
		}
	}
	return tags
}

func (i *imageEntry) repoDigests() []string {
	seen := map[string]bool{}
	digests := []string{}
	for _, n := range i.names {
		r, err := reference.ParseNormalizedNamed(n.Name)
		if err != nil {
			continue
		}
		d := reference.FamiliarName(r) + "@" + i.id()
		if !seen[d] {
			seen[d] = true
			digests = append(digests, d)
		}
	}
	return digests
}

// dangling is an image without a tag (only digested names).
func (i *imageEntry) dangling() bool { return len(i.repoTags()) == 0 }

// listImages reads every image of the namespace, grouped by target.
func (e *Engine) listImages(ctx context.Context) ([]*imageEntry, error) {
	imgs, err := e.cfg.Client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	sort.Slice(imgs, func(a, b int) bool { return imgs[a].Name < imgs[b].Name })
	byID := map[string]*imageEntry{}
	var out []*imageEntry
	for _, img := range imgs {
		d := img.Target.Digest.String()
		ent := byID[d]
		if ent == nil {
			ent = &imageEntry{target: img.Target, created: img.CreatedAt}
			byID[d] = ent
			out = append(out, ent)
			ci := containerd.NewImage(e.cfg.Client.Client, img)
			if spec, err := ci.Spec(ctx); err == nil {
				ent.spec = spec
				ent.labels = spec.Config.Labels
				if spec.Created != nil {
					ent.created = *spec.Created
				}
			}
			ent.size, _ = ci.Size(ctx)
		} else if spec := ent.spec; spec.Created == nil && img.CreatedAt.Before(ent.created) {
			ent.created = img.CreatedAt
		}
		ent.names = append(ent.names, img)
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].created.After(out[b].created) })
	return out, nil
}

// findImage finds an image as Docker takes a reference (a name, or an ID or a unique prefix
// of one), without unpacking it. byName is the name matched when ref was a name. 404 "No
// such image: REF" when there is none.
func (e *Engine) findImage(ctx context.Context, ref string) (ent *imageEntry, byName string, err error) {
	all, err := e.listImages(ctx)
	if err != nil {
		return nil, "", err
	}
	if name, nerr := ctrd.Normalize(ref); nerr == nil {
		for _, i := range all {
			for _, n := range i.names {
				if n.Name == name {
					return i, name, nil
				}
			}
		}
	}
	if r, perr := reference.ParseNormalizedNamed(ref); perr == nil {
		if c, ok := r.(reference.Canonical); ok {
			// repo@digest: the image of that digest with a name in that repository.
			for _, i := range all {
				for _, n := range i.names {
					if nr, err := reference.ParseNormalizedNamed(n.Name); err == nil && nr.Name() == c.Name() && i.target.Digest == c.Digest() {
						return i, "", nil
					}
				}
			}
		}
	}
	if id := strings.TrimPrefix(ref, "sha256:"); validIDPrefix.MatchString(id) {
		var found []*imageEntry
		for _, i := range all {
			if strings.HasPrefix(i.target.Digest.Encoded(), id) {
				found = append(found, i)
			}
		}
		if len(found) == 1 {
			return found[0], "", nil
		}
	}
	if name, nerr := ctrd.Normalize(ref); nerr == nil {
		ref = ctrd.ShortName(name)
	}
	return nil, "", notFound("No such image: %s", ref)
}

// containersOf are the containers made from image id (a digest), the running first.
func (e *Engine) containersOf(id string) []record {
	e.mu.Lock()
	defer e.mu.Unlock()
	var recs []record
	for _, c := range e.ctrs {
		if c.rec.ImageID == id && !c.removed {
			recs = append(recs, c.rec)
		}
	}
	sort.Slice(recs, func(a, b int) bool {
		ra, rb := recs[a].State.Status == container.StateRunning, recs[b].State.Status == container.StateRunning
		if ra != rb {
			return ra
		}
		return recs[a].Created.Before(recs[b].Created)
	})
	return recs
}

// shortImageID is an ID as Docker prints it in messages: 12 hex digits.
func shortImageID(id string) string {
	hex := strings.TrimPrefix(id, "sha256:")
	if len(hex) > 12 {
		hex = hex[:12]
	}
	return hex
}
