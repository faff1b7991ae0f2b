package engine

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/image"

	"github.com/moatc/moatc/ctrd"
)

func init() {
	route("POST /images/prune", imagePrune)
}

// imageTag is POST /images/{name}/tag?repo=&tag=: 201, no body.
func imageTag(e *Engine, w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	q := r.URL.Query()
	repo, tag := q.Get("repo"), q.Get("tag")
	if repo == "" {
		return invalid("repository name must have at least one component")
	}
	ref, err := reference.ParseNormalizedNamed(repo)
	if err != nil {
		return invalid("invalid reference format: %s", repo)
	}
	if _, ok := ref.(reference.Digested); ok {
		return invalid("refusing to create a tag with a digest reference")
	}
	if tag != "" {
		if ref, err = reference.WithTag(reference.TrimNamed(ref), tag); err != nil {
			return invalid("invalid tag format: %s", tag)
		}
	}
	ref = reference.TagNameOnly(ref)
	i, _, err := e.findImage(ctx, name)
	if err != nil {
		return err
	}
	if err := e.setName(ctx, ref.String(), i); err != nil {
		return err
	}
	e.emit(events.ImageEventType, events.ActionTag, i.id(), map[string]string{"name": reference.FamiliarString(ref)})
	w.WriteHeader(http.StatusCreated)
	return nil
}

// setName points name at i's target, taking the name from another image if it had it.
func (e *Engine) setName(ctx context.Context, name string, i *imageEntry) error {
	is := e.cfg.Client.ImageService()
	img := images.Image{Name: name, Target: i.target}
	if len(i.names) > 0 {
		img.Labels = i.names[0].Labels
	}
	if _, err := is.Create(ctx, img); errdefs.IsAlreadyExists(err) {
		if _, err := is.Update(ctx, img, "target", "labels"); err != nil {
			return fmt.Errorf("tagging image %s as %s: %w", i.id(), name, err)
		}
	} else if err != nil {
		return fmt.Errorf("tagging image %s as %s: %w", i.id(), name, err)
	}
	return nil
}

// imageDelete is DELETE /images/{name}?force=&noprune=, as Docker decides it: a name of an
// image with other names is untagged; the last name, or an ID, deletes the image, unless a
// container uses it (409; force goes ahead, but never over a running container when asked
// by ID) or, by ID, it has names in several repositories (409 unless force).
func imageDelete(e *Engine, w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ref := r.PathValue("rest")
	force := boolParam(r, "force")
	i, byName, err := e.findImage(ctx, ref)
	if err != nil {
		return err
	}
	users := e.containersOf(i.id())
	var out []image.DeleteResponse
	if byName != "" {
		if len(i.names) > 1 {
			if err := e.untag(ctx, i, byName, false); err != nil {
				return err
			}
			return writeJSON(w, http.StatusOK, []image.DeleteResponse{{Untagged: ctrd.ShortName(byName)}})
		}
		if len(users) > 0 && !force {
			return conflict("conflict: unable to remove repository reference %q (must force) - container %s is using its referenced image %s",
				ref, users[0].ID[:12], shortImageID(i.id()))
		}
	} else {
		if len(users) > 0 {
			u := users[0]
			if u.State.Status == container.StateRunning {
				return conflict("conflict: unable to delete %s (cannot be forced) - image is being used by running container %s", shortImageID(i.id()), u.ID[:12])
			}
			if !force {
				return conflict("conflict: unable to delete %s (must be forced) - image is being used by stopped container %s", shortImageID(i.id()), u.ID[:12])
			}
		}
		repos := map[string]bool{}
		for _, n := range i.names {
			if nr, err := reference.ParseNormalizedNamed(n.Name); err == nil {
				repos[nr.Name()] = true
			}
		}
		if len(repos) > 1 && !force {
			return conflict("conflict: unable to delete %s (must be forced) - image is referenced in multiple repositories", shortImageID(i.id()))
		}
	}
	out, err = e.deleteImage(ctx, i)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}

// untag removes one name of i. last: it is i's last, and containerd collects what only it
// held before the answer.
func (e *Engine) untag(ctx context.Context, i *imageEntry, name string, last bool) error {
	var opts []images.DeleteOpt
	if last {
		opts = append(opts, images.SynchronousDelete())
	}
	if err := e.cfg.Client.ImageService().Delete(ctx, name, opts...); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("untagging image %s: %w", ctrd.ShortName(name), err)
	}
	e.emit(events.ImageEventType, events.ActionUnTag, i.id(), map[string]string{"name": ctrd.ShortName(name)})
	return nil
}

// deleteImage removes every name of i, then i: what Docker reports of it.
func (e *Engine) deleteImage(ctx context.Context, i *imageEntry) ([]image.DeleteResponse, error) {
	var out []image.DeleteResponse
	for n, img := range i.names {
		if err := e.untag(ctx, i, img.Name, n == len(i.names)-1); err != nil {
			return out, err
		}
		out = append(out, image.DeleteResponse{Untagged: ctrd.ShortName(img.Name)})
	}
	out = append(out, image.DeleteResponse{Deleted: i.id()})
	e.emit(events.ImageEventType, events.ActionDelete, i.id(), map[string]string{"name": i.id()})
	return out, nil
}

var imagePruneFilters = []string{"dangling", "until", "label", "label!"}

// imagePrune is POST /images/prune?filters=: the dangling images (with dangling=false, every
// image) that no container uses.
func imagePrune(e *Engine, w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	f, err := parseFilters(r.URL.Query().Get("filters"), imagePruneFilters...)
	if err != nil {
		return err
	}
	danglingOnly := true
	for _, v := range f["dangling"] {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return invalid("Invalid filter 'dangling=%s'", v)
		}
		danglingOnly = b
	}
	var until time.Time
	for _, v := range f["until"] {
		if until, err = eventTime(v, time.Now()); err != nil {
			return invalid("invalid until filter %q: %v", v, err)
		}
	}
	all, err := e.listImages(ctx)
	if err != nil {
		return err
	}
	report := image.PruneReport{ImagesDeleted: []image.DeleteResponse{}}
	for _, i := range all {
		if (danglingOnly && !i.dangling()) || (!until.IsZero() && !i.created.Before(until)) ||
			!f.matchLabel(i.labels) || !f.matchNotLabel(i.labels) || len(e.containersOf(i.id())) > 0 {
			continue
		}
		deleted, err := e.deleteImage(ctx, i)
		report.ImagesDeleted = append(report.ImagesDeleted, deleted...)
		if err != nil {
			return err
		}
		report.SpaceReclaimed += uint64(i.size)
	}
	e.emit(events.ImageEventType, events.ActionPrune, "", map[string]string{"reclaimed": strconv.FormatUint(report.SpaceReclaimed, 10)})
	return writeJSON(w, http.StatusOK, report)
}
