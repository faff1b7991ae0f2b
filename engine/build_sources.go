package engine

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	spb "github.com/moby/buildkit/sourcepolicy/pb"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// What a build through the engine may read besides its context. buildkitd serves every run and
// moatc's own dependency builds: its worker's image store is moatc's (the person's images), and
// what it fetches leaves from the host, not through the run's network. So a build's images come
// from the engine's own namespace only, handed to BuildKit as named contexts read through the
// build's session (a FROM the engine lacks is pulled first, through the engine's pull checks),
// and a source policy refuses every other source: registry images, ADD of URLs, git.

// buildStoreID names the engine's content store in the build's session.
const buildStoreID = "moatc-engine"

// buildPolicy allows the build's own context and Dockerfile (local) and the engine's images
// (oci-layout); the last rule that matches wins.
func buildPolicy() *spb.Policy {
	rule := func(a spb.PolicyAction, re string) *spb.Rule {
		return &spb.Rule{Action: a, Selector: &spb.Selector{Identifier: re, MatchType: spb.MatchType_REGEX}}
	}
	return &spb.Policy{Rules: []*spb.Rule{
		rule(spb.PolicyAction_DENY, `^.*$`),
		rule(spb.PolicyAction_ALLOW, `^local://(context|dockerfile)$`),
		rule(spb.PolicyAction_ALLOW, `^oci-layout://`),
	}}
}

// deniedHint explains a build refused by buildPolicy.
const deniedHint = "moatc builds only from the engine's images and the build context: `docker pull` or `docker load` the image first; ADD of a URL and git sources are refused (use RUN wget or curl, which runs on the run's network)"

// baseImages lists the images a Dockerfile names (FROM, COPY --from) that are not its own
// stages or scratch, with build args and ARGs before the first FROM expanded. It is best
// effort: what it misses is refused by buildPolicy with deniedHint, never read elsewhere.
func baseImages(dockerfile []byte, buildArgs map[string]string) []string {
	res, err := parser.Parse(bytes.NewReader(dockerfile))
	if err != nil {
		return nil
	}
	stages, metaArgs, err := instructions.Parse(res.AST, linter.New(&linter.Config{}))
	if err != nil {
		return nil
	}
	env := argEnv{}
	for _, a := range metaArgs {
		for _, kv := range a.Args {
			if v, ok := buildArgs[kv.Key]; ok {
				env[kv.Key] = v
			} else if kv.Value != nil {
				v, _, err := shell.NewLex(res.EscapeToken).ProcessWord(*kv.Value, env)
				if err == nil {
					env[kv.Key] = v
				}
			}
		}
	}
	lex := shell.NewLex(res.EscapeToken)
	isStage := func(name string, before int) bool {
		if i, err := strconv.Atoi(name); err == nil {
			return i >= 0 && i < before
		}
		for _, s := range stages[:before] {
			if s.Name != "" && strings.EqualFold(s.Name, name) {
				return true
			}
		}
		return false
	}
	var out []string
	add := func(name string) {
		if name == "" || strings.EqualFold(name, "scratch") || strings.Contains(name, "$") || slices.Contains(out, name) {
			return
		}
		out = append(out, name)
	}
	for i, s := range stages {
		base, _, err := lex.ProcessWord(s.BaseName, env)
		if err == nil && !isStage(base, i) {
			add(base)
		}
		for _, c := range s.Commands {
			if cp, ok := c.(*instructions.CopyCommand); ok && cp.From != "" && !isStage(cp.From, len(stages)) {
				add(cp.From)
			}
		}
	}
	return out
}

// argEnv is the ARG values a FROM line is expanded with.
type argEnv map[string]string

func (a argEnv) Get(k string) (string, bool) { v, ok := a[k]; return v, ok }
func (a argEnv) Keys() []string              { return slices.Collect(maps.Keys(a)) }

// pullBaseImages pulls the images the Dockerfile names that the engine lacks (all of them with
// `--pull`), as `docker pull` would (Engine.pull), without credentials.
func (e *Engine) pullBaseImages(ctx context.Context, refs []string, always bool, out *jsonStream) error {
	is := e.cfg.Client.ImageService()
	for _, ref := range refs {
		named, err := reference.ParseNormalizedNamed(ref)
		if err != nil {
			continue // BuildKit reports it, with the Dockerfile's line
		}
		named = reference.TagNameOnly(named)
		if !always {
			if _, err := is.Get(ctx, named.String()); err == nil {
				continue
			}
		}
		if made, err := e.ensureReaperImage(ctx, named.String()); err != nil {
			return err
		} else if made {
			continue
		}
		out.Write([]byte("pulling " + reference.FamiliarString(named) + " for the build\n"))
		if _, err := e.pull(ctx, named, nil, nil); err != nil {
			return fmt.Errorf("pulling %s for the build: %w", reference.FamiliarString(named), unwrapPull(err))
		}
	}
	return nil
}

// namedContexts maps every image of the engine's namespace to itself in the engine's content
// store, under the names a Dockerfile may write it by (the frontend looks up the familiar
// name, without ":latest"; or name@digest).
func (e *Engine) namedContexts(ctx context.Context) (map[string]string, error) {
	imgs, err := e.cfg.Client.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing the engine's images for the build: %w", err)
	}
	attrs := map[string]string{}
	for _, img := range imgs {
		named, err := reference.ParseNormalizedNamed(img.Name)
		if err != nil || strings.HasPrefix(img.Name, danglingPrefix) {
			continue
		}
		src := "oci-layout://" + buildStoreID + "@" + img.Target.Digest.String()
		if _, ok := named.(reference.Digested); !ok {
			attrs["context:"+strings.TrimSuffix(reference.FamiliarString(reference.TagNameOnly(named)), ":latest")] = src
		}
		if d, err := reference.WithDigest(reference.TrimNamed(named), img.Target.Digest); err == nil {
			attrs["context:"+reference.FamiliarString(d)] = src
		}
	}
	return attrs, nil
}

// engineStore is the engine's content store as the build's session serves it to buildkitd:
// read-only, and in the engine's namespace whatever context the session's server calls with.
type engineStore struct {
	content.Store
	ns string
}

func (s engineStore) with(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, s.ns)
}

func (s engineStore) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	return s.Store.Info(s.with(ctx), d)
}

func (s engineStore) ReaderAt(ctx context.Context, d ocispec.Descriptor) (content.ReaderAt, error) {
	return s.Store.ReaderAt(s.with(ctx), d)
}

func (s engineStore) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	return s.Store.Walk(s.with(ctx), fn, filters...)
}

func (s engineStore) Status(ctx context.Context, ref string) (content.Status, error) {
	return s.Store.Status(s.with(ctx), ref)
}

func (s engineStore) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	return s.Store.ListStatuses(s.with(ctx), filters...)
}

func (s engineStore) Update(context.Context, content.Info, ...string) (content.Info, error) {
	return content.Info{}, fmt.Errorf("the engine's store is read-only to builds: %w", errdefs.ErrPermissionDenied)
}

func (s engineStore) Delete(context.Context, digest.Digest) error {
	return fmt.Errorf("the engine's store is read-only to builds: %w", errdefs.ErrPermissionDenied)
}

func (s engineStore) Writer(context.Context, ...content.WriterOpt) (content.Writer, error) {
	return nil, fmt.Errorf("the engine's store is read-only to builds: %w", errdefs.ErrPermissionDenied)
}

func (s engineStore) Abort(context.Context, string) error {
	return fmt.Errorf("the engine's store is read-only to builds: %w", errdefs.ErrPermissionDenied)
}
