package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/moby/moby/api/types/events"
	"github.com/tonistiigi/fsutil"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/ctrd"
)

// Builder is what an engine builds images with: moatc's managed buildkitd, whose containerd
// worker writes into Daemon.Namespace (moatc's store), and the sandbox its RUN steps need.
type Builder struct {
	Daemon *builder.Daemon
	// Hold marks a build live and prepares the build sandbox (gVisor, the build network);
	// see run.Manager.HoldBuilder. end unmarks it.
	Hold func(ctx context.Context) (end func(), err error)
}

// danglingPrefix names an untagged build's image in containerd (which needs a name), as
// Docker's containerd image store does (fully qualified, as moatc's lookups want names).
const danglingPrefix = "docker.io/library/moby-dangling@"

func init() {
	route("POST /build", buildPost)
	route("POST /build/prune", buildPrune)
}

// buildOptions are POST /build's query parameters that moatc acts on.
type buildOptions struct {
	dockerfile string
	tags       []string
	attrs      map[string]string
	quiet      bool
	pull       bool // pull the Dockerfile's images even when the engine has them
}

func parseBuildOptions(r *http.Request) (buildOptions, error) {
	q := r.URL.Query()
	o := buildOptions{dockerfile: q.Get("dockerfile"), attrs: map[string]string{}}
	if o.dockerfile == "" {
		o.dockerfile = "Dockerfile"
	}
	if p := path.Clean("/" + o.dockerfile); strings.HasPrefix(o.dockerfile, "/") || strings.Contains(o.dockerfile, "..") || p == "/" {
		return o, invalid("the Dockerfile path %q must be inside the build context", o.dockerfile)
	}
	for _, t := range q["t"] {
		name, err := ctrd.Normalize(t)
		if err != nil {
			return o, invalid("invalid reference format: %s", t)
		}
		o.tags = append(o.tags, name)
	}
	for _, k := range []string{"buildargs", "labels"} {
		v := q.Get(k)
		if v == "" {
			continue
		}
		var m map[string]*string
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return o, invalid("%s: %v", k, err)
		}
		prefix := "build-arg:"
		if k == "labels" {
			prefix = "label:"
		}
		for name, val := range m {
			if val != nil {
				o.attrs[prefix+name] = *val
			}
		}
	}
	// RUN steps share a network namespace of their own on the build network (see
	// builder.SandboxHostname); a Dockerfile cannot unset that.
	o.attrs["build-arg:BUILDKIT_SANDBOX_HOSTNAME"] = builder.SandboxHostname
	if t := q.Get("target"); t != "" {
		o.attrs["target"] = t
	}
	if boolParam(r, "nocache") {
		o.attrs["no-cache"] = ""
	}
	o.pull = boolParam(r, "pull")
	if p := q.Get("platform"); p != "" {
		o.attrs["platform"] = p
	}
	switch nm := q.Get("networkmode"); nm {
	case "", "default", "bridge":
	case "none":
		o.attrs["force-network-mode"] = "none"
	case "host":
		return o, forbidden("moatc does not give builds the host's network: RUN steps use the build network")
	default:
		return o, invalid("network mode %q: builds take default or none", nm)
	}
	if v := q.Get("extrahosts"); v != "" {
		o.attrs["add-hosts"] = v
	}
	o.quiet = boolParam(r, "q")
	return o, nil
}

// jsonStream writes the build's JSON messages, one a line, flushed as they come.
type jsonStream struct {
	mu  sync.Mutex
	w   io.Writer
	rc  *http.ResponseController
	off bool // -q: only the result
}

func (s *jsonStream) send(v any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, _ := json.Marshal(v)
	s.w.Write(append(b, '\n'))
	s.rc.Flush()
}

// Write takes BuildKit's plain progress and passes it on as {"stream": ...} messages.
func (s *jsonStream) Write(p []byte) (int, error) {
	if !s.off {
		s.send(map[string]string{"stream": string(p)})
	}
	return len(p), nil
}

func (s *jsonStream) fail(err error) {
	msg := err.Error()
	s.send(map[string]any{"errorDetail": map[string]string{"message": msg}, "error": msg})
}

func buildPost(e *Engine, w http.ResponseWriter, r *http.Request) error {
	b := e.cfg.Builder
	if b == nil || b.Daemon == nil {
		return notImplemented("moatc does not support builds in this engine: it has no builder")
	}
	opts, err := parseBuildOptions(r)
	if err != nil {
		return err
	}
	ctx := r.Context() // a client that leaves cancels the solve
	// Marked live before its context directory exists: Sweep removes the ctx-* directories
	// (this one's too, after a kill) only when no build is live.
	if b.Hold != nil {
		end, err := b.Hold(ctx)
		if err != nil {
			return err
		}
		defer end()
	}
	if err := os.MkdirAll(b.Daemon.Dir, 0o700); err != nil {
		return fmt.Errorf("making the build's context directory: %w", err)
	}
	dir, err := os.MkdirTemp(b.Daemon.Dir, "ctx-engine-") // builder's contextDirPrefix
	if err != nil {
		return fmt.Errorf("making the build's context directory: %w", err)
	}
	defer os.RemoveAll(dir)
	ctxDir := filepath.Join(dir, "context")
	if err := os.Mkdir(ctxDir, 0o700); err != nil {
		return err
	}
	if err := extractContext(r.Body, ctxDir); err != nil {
		return err
	}
	dfPath := filepath.Join(ctxDir, filepath.FromSlash(opts.dockerfile))
	if fi, err := os.Lstat(dfPath); err != nil || !fi.Mode().IsRegular() {
		return invalid("Cannot locate specified Dockerfile: %s", opts.dockerfile)
	}

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	out := &jsonStream{w: w, rc: http.NewResponseController(w), off: opts.quiet}
	id, err := e.build(ctx, b, ctxDir, opts, out)
	if err != nil {
		out.fail(err)
		return nil
	}
	out.send(map[string]any{"aux": map[string]string{"ID": id}})
	if opts.quiet {
		out.off = false
		out.send(map[string]string{"stream": id + "\n"})
		return nil
	}
	out.send(map[string]string{"stream": "Successfully built " + strings.TrimPrefix(id, "sha256:")[:12] + "\n"})
	for _, t := range opts.tags {
		out.send(map[string]string{"stream": "Successfully tagged " + ctrd.ShortName(t) + "\n"})
	}
	return nil
}

// build solves the context with BuildKit's dockerfile frontend into a temporary image of the
// worker's namespace, copies it by reference into the engine's under each tag (or as a
// dangling image), and removes it from the worker's: a build through the engine never shows
// in `moatc image ls`. It returns the image's ID.
func (e *Engine) build(ctx context.Context, b *Builder, ctxDir string, opts buildOptions, out *jsonStream) (string, error) {
	if err := b.Daemon.Start(ctx); err != nil {
		return "", err
	}
	c, err := connectBuildkit(ctx, b.Daemon)
	if err != nil {
		return "", err
	}
	defer c.Close()
	ctxFS, err := fsutil.NewFS(ctxDir)
	if err != nil {
		return "", err
	}
	dfFS, err := fsutil.NewFS(filepath.Join(ctxDir, filepath.Dir(filepath.FromSlash(opts.dockerfile))))
	if err != nil {
		return "", err
	}
	df, err := os.ReadFile(filepath.Join(ctxDir, filepath.FromSlash(opts.dockerfile)))
	if err != nil {
		return "", fmt.Errorf("reading the Dockerfile: %w", err)
	}
	buildArgs := map[string]string{}
	for k, v := range opts.attrs {
		if name, ok := strings.CutPrefix(k, "build-arg:"); ok {
			buildArgs[name] = v
		}
	}
	if err := e.pullBaseImages(ctx, baseImages(df, buildArgs), opts.pull, out); err != nil {
		return "", err
	}
	attrs, err := e.namedContexts(ctx)
	if err != nil {
		return "", err
	}
	attrs["filename"] = path.Base(opts.dockerfile)
	for k, v := range opts.attrs {
		attrs[k] = v
	}
	// The builtin frontend, never one a `# syntax=` line names (an image from a registry).
	attrs["cmdline"] = ""
	// Cache mounts are the engine's own: a build may not read or poison the cache of another
	// engine's builds or of moatc's dependency builds on the same buildkitd.
	attrs["build-arg:BUILDKIT_CACHE_MOUNT_NS"] = "moatc-engine/" + e.cfg.Client.Namespace
	if e.cfg.Strict {
		// The build network's rules are not the run's strict ones: RUN steps get none.
		attrs["force-network-mode"] = "none"
	}
	tmp := "docker.io/moatc-engine-build/" + newID()[:24] + ":latest"
	// The temporary name goes even when the build fails half-way through exporting.
	defer e.removeWorkerImage(b, tmp)
	opt := bkclient.SolveOpt{
		Frontend:      "dockerfile.v0",
		FrontendAttrs: attrs,
		LocalMounts:   map[string]fsutil.FS{"context": ctxFS, "dockerfile": dfFS},
		OCIStores:     map[string]content.Store{buildStoreID: engineStore{Store: e.cfg.Client.ContentStore(), ns: e.cfg.Client.Namespace}},
		SourcePolicy:  buildPolicy(),
		Exports: []bkclient.ExportEntry{{
			Type:  bkclient.ExporterImage,
			Attrs: map[string]string{"name": tmp},
		}},
	}
	disp, err := progressui.NewDisplay(out, progressui.PlainMode)
	if err != nil {
		return "", fmt.Errorf("progress display: %w", err)
	}
	ch := make(chan *bkclient.SolveStatus)
	done := make(chan struct{})
	go func() {
		defer close(done)
		disp.UpdateFrom(context.WithoutCancel(ctx), ch)
	}()
	_, err = c.Solve(ctx, nil, opt, ch) // closes ch
	<-done
	if err != nil {
		msg := buildErrorMessage(err)
		if strings.Contains(msg, "denied by policy") {
			msg += ": " + deniedHint
		}
		return "", fmt.Errorf("%s", msg)
	}

	cl := e.cfg.Client
	if _, err := cl.CopyImage(ctx, b.Daemon.Namespace, tmp, e.cfg.Snapshotter); err != nil {
		return "", fmt.Errorf("moving the built image into the engine's namespace: %w", err)
	}
	is := cl.ImageService()
	img, err := is.Get(ctx, tmp)
	if err != nil {
		return "", fmt.Errorf("moving the built image into the engine's namespace: %w", err)
	}
	defer is.Delete(context.WithoutCancel(ctx), tmp)
	names := opts.tags
	if len(names) == 0 {
		names = []string{danglingPrefix + img.Target.Digest.String()}
	}
	for _, n := range names {
		dst := images.Image{Name: n, Target: img.Target, Labels: img.Labels}
		if _, err := is.Create(ctx, dst); errdefs.IsAlreadyExists(err) {
			_, err = is.Update(ctx, dst, "target", "labels")
			if err != nil {
				return "", fmt.Errorf("tagging the built image %s: %w", n, err)
			}
		} else if err != nil {
			return "", fmt.Errorf("tagging the built image %s: %w", n, err)
		}
		if n != names[0] || len(opts.tags) > 0 {
			e.emit(events.ImageEventType, events.ActionTag, img.Target.Digest.String(), map[string]string{"name": ctrd.ShortName(n)})
		}
	}
	return img.Target.Digest.String(), nil
}

// connectBuildkit connects to buildkitd once it answers gRPC: one just started may take its
// socket's connections a moment before it serves them (seen: "error reading server preface").
func connectBuildkit(ctx context.Context, d *builder.Daemon) (*bkclient.Client, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := bkclient.New(ctx, d.Address())
		if err != nil {
			return nil, fmt.Errorf("connecting to buildkitd on %s: %w", d.Address(), err)
		}
		_, err = c.ListWorkers(ctx)
		if err == nil {
			return c, nil
		}
		c.Close()
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("connecting to buildkitd on %s: %w", d.Address(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// removeWorkerImage removes the build's temporary name from the worker's namespace (moatc's
// store); its blobs stay as long as the engine's namespace or BuildKit's cache holds them.
func (e *Engine) removeWorkerImage(b *Builder, name string) {
	ctx := namespaces.WithNamespace(context.WithoutCancel(e.bg), b.Daemon.Namespace)
	if err := e.cfg.Client.ImageService().Delete(ctx, name); err != nil && !errdefs.IsNotFound(err) {
		fmt.Fprintf(os.Stderr, "moatc: engine: removing the build's image %s: %v\n", name, err)
	}
}

// buildErrorMessage is BuildKit's error without its gRPC wrapping.
func buildErrorMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"rpc error: code = Unknown desc = ", "rpc error: code = Canceled desc = "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}

// buildPrune is POST /build/prune. moatc's buildkitd and its cache serve every run and every
// workspace's dependency builds: a workload may not empty it for the others, so nothing is
// pruned (the answer says so: nothing deleted). The person at the host prunes it with
// `moatc clean`'s build-cache settings, not the workload.
func buildPrune(e *Engine, w http.ResponseWriter, r *http.Request) error {
	if b := e.cfg.Builder; b == nil || b.Daemon == nil {
		return notImplemented("moatc does not support builds in this engine: it has no builder")
	}
	return writeJSON(w, http.StatusOK, map[string]any{"CachesDeleted": []string{}, "SpaceReclaimed": 0})
}
