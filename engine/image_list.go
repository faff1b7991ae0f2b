package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	"github.com/moby/moby/api/types/image"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func init() {
	route("GET /images/json", imageList)
	// Names have slashes (moatc-e2e/web:1): one pattern takes the rest of the path, and the
	// last segment says what is asked.
	route("GET /images/{rest...}", imageGetSub)
	route("POST /images/{rest...}", imagePostSub)
	route("DELETE /images/{rest...}", imageDelete)
}

func imageGetSub(e *Engine, w http.ResponseWriter, r *http.Request) error {
	rest := r.PathValue("rest")
	if name, ok := strings.CutSuffix(rest, "/json"); ok && name != "" {
		return imageInspect(e, w, r, name)
	}
	if name, ok := strings.CutSuffix(rest, "/history"); ok && name != "" {
		return imageHistory(e, w, r, name)
	}
	if name, ok := strings.CutSuffix(rest, "/get"); ok && name != "" {
		return imageSave(e, w, r, []string{name})
	}
	return notSupported(e, w, r)
}

func imagePostSub(e *Engine, w http.ResponseWriter, r *http.Request) error {
	rest := r.PathValue("rest")
	if name, ok := strings.CutSuffix(rest, "/tag"); ok && name != "" {
		return imageTag(e, w, r, name)
	}
	if _, ok := strings.CutSuffix(rest, "/push"); ok {
		return notImplemented("moatc does not support pushing images yet: push from moatc's store with `moatc image push` where it exists, or from a registry client")
	}
	return notSupported(e, w, r)
}

var imageFilters = []string{"reference", "label", "dangling", "before", "since", "until"}

// imageList is GET /images/json?all=&filters=&digests=&manifests=.
func imageList(e *Engine, w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	f, err := parseFilters(r.URL.Query().Get("filters"), imageFilters...)
	if err != nil {
		return err
	}
	keep, err := e.imageFilter(ctx, f)
	if err != nil {
		return err
	}
	all, err := e.listImages(ctx)
	if err != nil {
		return err
	}
	out := []image.Summary{}
	for _, i := range all {
		if !keep(i) {
			continue
		}
		d := i.target
		if pats := f["reference"]; len(pats) > 0 {
			// As Docker: only the names the filter matched are shown.
			matched := *i
			matched.names = nil
			for _, n := range i.names {
				one := imageEntry{names: []images.Image{n}}
				if f.matchAny("reference", func(p string) bool { return matchReference(p, &one) }) {
					matched.names = append(matched.names, n)
				}
			}
			i = &matched
		}
		users := e.containersOf(i.id())
		sum := image.Summary{
			ID: i.id(), RepoTags: i.repoTags(), RepoDigests: i.repoDigests(), Created: i.created.Unix(),
			Size: i.size, SharedSize: -1, Labels: i.labels, Containers: int64(len(users)),
			Descriptor: &d,
		}
		if boolParam(r, "manifests") {
			sum.Manifests = e.imageManifests(ctx, i, users)
		}
		out = append(out, sum)
	}
	return writeJSON(w, http.StatusOK, out)
}

// imageFilter makes the list's filters one predicate. A before/since image that does not
// exist is 404, as Docker answers.
func (e *Engine) imageFilter(ctx context.Context, f filters) (func(*imageEntry) bool, error) {
	var dangling *bool
	for _, v := range f["dangling"] {
		switch strings.ToLower(v) {
		case "true", "1":
			t := true
			dangling = &t
		case "false", "0":
			t := false
			dangling = &t
		default:
			return nil, invalid("Invalid filter 'dangling=%s'", v)
		}
	}
	var before, since time.Time
	for _, v := range f["before"] {
		i, _, err := e.findImage(ctx, v)
		if err != nil {
			return nil, err
		}
		before = i.created
	}
	for _, v := range f["since"] {
		i, _, err := e.findImage(ctx, v)
		if err != nil {
			return nil, err
		}
		since = i.created
	}
	var until time.Time
	for _, v := range f["until"] {
		t, err := eventTime(v, time.Now())
		if err != nil {
			return nil, invalid("invalid until filter %q: %v", v, err)
		}
		until = t
	}
	for _, p := range f["reference"] {
		if _, err := path.Match(p, ""); err != nil {
			return nil, invalid("invalid reference filter %q: %v", p, err)
		}
	}
	return func(i *imageEntry) bool {
		switch {
		case dangling != nil && i.dangling() != *dangling,
			!before.IsZero() && !i.created.Before(before),
			!since.IsZero() && !i.created.After(since),
			!until.IsZero() && !i.created.Before(until),
			!f.matchLabel(i.labels):
			return false
		}
		return f.matchAny("reference", func(p string) bool { return matchReference(p, i) })
	}, nil
}

// matchReference is Docker's reference filter: a glob against each name, with its tag
// (busybox:1*) or without (busybox, library/*).
func matchReference(pattern string, i *imageEntry) bool {
	for _, n := range i.names {
		r, err := reference.ParseNormalizedNamed(n.Name)
		if err != nil {
			continue
		}
		for _, s := range []string{reference.FamiliarString(r), reference.FamiliarName(r), r.String(), r.Name()} {
			if ok, _ := path.Match(pattern, s); ok {
				return true
			}
		}
	}
	return false
}

// imageManifests is the list's Manifests (manifests=1, which the CLI's `docker images`
// asks for): the one manifest of the engine's platform, its sizes and its containers.
func (e *Engine) imageManifests(ctx context.Context, i *imageEntry, users []record) []image.ManifestSummary {
	cs := e.cfg.Client.ContentStore()
	m, err := images.Manifest(ctx, cs, i.target, platforms.Default())
	if err != nil {
		return nil
	}
	desc := i.target
	if images.IsIndexType(desc.MediaType) {
		if ms, err := images.Children(ctx, cs, desc); err == nil {
			for _, c := range ms {
				if c.Platform != nil && platforms.Default().Match(*c.Platform) {
					desc = c
					break
				}
			}
		}
	}
	ms := image.ManifestSummary{ID: desc.Digest.String(), Descriptor: desc, Available: true, Kind: image.ManifestKindImage,
		ImageData: &image.ImageProperties{Containers: []string{}}}
	ms.Size.Content = desc.Size + m.Config.Size
	for _, l := range m.Layers {
		ms.Size.Content += l.Size
	}
	ms.ImageData.Platform = platforms.Normalize(platforms.DefaultSpec())
	if i.spec.OS != "" {
		ms.ImageData.Platform = i.spec.Platform
	}
	// Unpacked: the layers' snapshots.
	sn := e.cfg.Client.SnapshotService(e.cfg.Snapshotter)
	var chain []digest.Digest
	for _, d := range i.spec.RootFS.DiffIDs {
		chain = append(chain, d)
		if u, err := sn.Usage(ctx, identity.ChainID(chain).String()); err == nil {
			ms.ImageData.Size.Unpacked += u.Size
		}
	}
	ms.Size.Total = ms.Size.Content + ms.ImageData.Size.Unpacked
	for _, u := range users {
		ms.ImageData.Containers = append(ms.ImageData.Containers, u.ID)
	}
	return []image.ManifestSummary{ms}
}

// imageInspect is GET /images/{name}/json.
func imageInspect(e *Engine, w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	if _, err := e.ensureReaperImage(ctx, name); err != nil { // testcontainers inspects before it pulls
		return err
	}
	i, _, err := e.findImage(ctx, name)
	if err != nil {
		return err
	}
	cfg, _, err := e.imageConfig(ctx, i)
	if err != nil {
		return err
	}
	d := i.target
	resp := image.InspectResponse{
		ID: i.id(), RepoTags: i.repoTags(), RepoDigests: i.repoDigests(),
		Config: &cfg.Config, Architecture: cfg.Architecture, Variant: cfg.Variant, Os: cfg.OS, OsVersion: cfg.OSVersion,
		Author: cfg.Author, Size: i.size, Descriptor: &d,
		RootFS: image.RootFS{Type: cfg.RootFS.Type},
	}
	if cfg.Created != nil {
		resp.Created = cfg.Created.UTC().Format(time.RFC3339Nano)
	}
	for _, l := range cfg.RootFS.DiffIDs {
		resp.RootFS.Layers = append(resp.RootFS.Layers, l.String())
	}
	for _, n := range i.names {
		if n.UpdatedAt.After(resp.Metadata.LastTagTime) {
			resp.Metadata.LastTagTime = n.UpdatedAt
		}
	}
	if len(cfg.History) > 0 {
		resp.Comment = cfg.History[len(cfg.History)-1].Comment
	}
	return writeJSON(w, http.StatusOK, resp)
}

// imageConfig reads the image's config (Docker's, with Healthcheck, Shell and OnBuild) and
// manifest for the engine's platform.
func (e *Engine) imageConfig(ctx context.Context, i *imageEntry) (dockerspec.DockerOCIImage, ocispec.Manifest, error) {
	var cfg dockerspec.DockerOCIImage
	cs := e.cfg.Client.ContentStore()
	m, err := images.Manifest(ctx, cs, i.target, platforms.Default())
	if err != nil {
		return cfg, m, fmt.Errorf("reading the manifest of image %s: %w", i.id(), err)
	}
	b, err := content.ReadBlob(ctx, cs, m.Config)
	if err != nil {
		return cfg, m, fmt.Errorf("reading the config of image %s: %w", i.id(), err)
	}
	if err := json.Unmarshal(b, &cfg); err != nil {
		return cfg, m, fmt.Errorf("reading the config of image %s: %w", i.id(), err)
	}
	return cfg, m, nil
}

// imageHistory is GET /images/{name}/history: the config's history, newest first; the
// layers' sizes are their compressed sizes from the manifest.
func imageHistory(e *Engine, w http.ResponseWriter, r *http.Request, name string) error {
	ctx := r.Context()
	i, _, err := e.findImage(ctx, name)
	if err != nil {
		return err
	}
	cfg, m, err := e.imageConfig(ctx, i)
	if err != nil {
		return err
	}
	out := []image.HistoryResponseItem{}
	layer := 0
	for _, h := range cfg.History {
		item := image.HistoryResponseItem{ID: "<missing>", CreatedBy: h.CreatedBy, Comment: h.Comment, Tags: nil}
		if h.Created != nil {
			item.Created = h.Created.Unix()
		}
		if !h.EmptyLayer {
			if layer < len(m.Layers) {
				item.Size = m.Layers[layer].Size
			}
			layer++
		}
		out = append([]image.HistoryResponseItem{item}, out...)
	}
	if len(out) == 0 {
		item := image.HistoryResponseItem{ID: "<missing>"}
		if cfg.Created != nil {
			item.Created = cfg.Created.Unix()
		}
		for _, l := range m.Layers {
			item.Size += l.Size
		}
		out = append(out, item)
	}
	out[0].ID = i.id()
	out[0].Tags = i.repoTags()
	return writeJSON(w, http.StatusOK, out)
}
