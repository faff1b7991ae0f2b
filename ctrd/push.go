package ctrd

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/authn"
	ggcrname "github.com/google/go-containerregistry/pkg/name"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// PushOptions say how Push speaks to the registry.
type PushOptions struct {
	// Insecure names registries spoken to over plain HTTP, as those on localhost always are:
	// each a HOST (any port) or HOST:PORT (that port only).
	Insecure []string
	// Progress, if set, is told of each index, manifest and blob as its push starts (one the
	// registry already holds is told too, and not sent).
	Progress func(ocispec.Descriptor)
	// Fetch, if set, is told of each blob fetched first from the registry the image came
	// from, because the store lacks it (see Push).
	Fetch func(ocispec.Descriptor)
}

// NotInStoreError says an image to be pushed is not in the store.
type NotInStoreError struct{ Ref string }

func (e *NotInStoreError) Error() string {
	return fmt.Sprintf("no image %s in moatc's store: see `moatc image ls` for its names (pull, import or build it first)", e.Ref)
}

func (e *NotInStoreError) Unwrap() error { return errdefs.ErrNotFound }

// Push sends image src of the store (a name as `moatc image ls` shows it; short names are
// normalized) to its registry as dest, a full reference with a tag (docker.io/team/app:v1,
// registry.example:5000/app:dev); "" means src's own name. It returns the descriptor of what
// was pushed: dest@desc.Digest names exactly that.
//
// Credentials come from the docker config (authn.DefaultKeychain: ~/.docker/config.json or
// $DOCKER_CONFIG/config.json, with their credential helpers), asked only when the registry
// wants some. Registries on localhost, and those of opt.Insecure, are spoken to over plain
// HTTP; the others over HTTPS.
//
// An index (a multi-platform image) whose every manifest is in the store is pushed whole. One
// that holds only some, as a pulled one does (a pull fetches the host's platform alone), is
// pushed as the host platform's manifest by itself: the descriptor returned then is that
// manifest's, with its Platform set. Otherwise the returned Platform is nil.
//
// A pull skips fetching the layers whose snapshots exist already (containerd's unpacker
// does), so a pulled image may lack some of its layer blobs: Push fetches those first from
// the registry the image's name points at, as a pull would, telling opt.Fetch.
func (c *Client) Push(ctx context.Context, src, dest string, opt PushOptions) (ocispec.Descriptor, error) {
	srcName, err := Normalize(src)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	if dest == "" {
		dest = srcName
	}
	named, err := reference.ParseNormalizedNamed(dest)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("%q is not an image reference (e.g. registry.example:5000/team/app:v1): %w", dest, err)
	}
	if _, ok := named.(reference.Digested); ok {
		return ocispec.Descriptor{}, fmt.Errorf("push destination %s names a digest: give a tag (the registry computes the digest, and moatc prints it)", dest)
	}
	destName := reference.TagNameOnly(named).String()
	host := reference.Domain(named)

	img, err := c.ImageService().Get(ctx, srcName)
	if errdefs.IsNotFound(err) {
		return ocispec.Descriptor{}, &NotInStoreError{Ref: src}
	}
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("looking up image %s: %w", srcName, err)
	}
	cs := c.ContentStore()
	target, err := pushTarget(ctx, cs, srcName, img.Target)
	if err != nil {
		return ocispec.Descriptor{}, err
	}

	kc, err := newKeychainCreds(destName)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	resolver := pullOptions{creds: kc.creds, insecure: opt.Insecure}.resolver()
	if ok, err := complete(ctx, cs, target); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading image %s: %w", srcName, err)
	} else if !ok {
		ctx, done, err := c.OwnedLease(ctx)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		err = fillIn(ctx, cs, resolver, srcName, target, opt.Fetch)
		done()
		if err != nil {
			srcHost := "its registry"
			if n, perr := reference.ParseNormalizedNamed(srcName); perr == nil {
				srcHost = reference.Domain(n)
			}
			return ocispec.Descriptor{}, pushError(err, fmt.Sprintf("fetching the blobs image %s lacks in moatc's store (a pull skips the layers unpacked already) from %s", srcName, srcHost),
				srcHost, kc.offered.Load())
		}
	}
	ropts := []containerd.RemoteOpt{
		containerd.WithResolver(resolver),
		containerd.WithPlatformMatcher(platforms.All), // target holds only what is to go
	}
	if opt.Progress != nil {
		ropts = append(ropts, containerd.WithImageHandler(images.HandlerFunc(
			func(_ context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				opt.Progress(d)
				return nil, nil
			})))
	}
	if err := c.Client.Push(ctx, destName, target, ropts...); err != nil {
		return ocispec.Descriptor{}, pushError(err, "pushing "+destName, host, kc.offered.Load())
	}
	return target, nil
}

// pushTarget is what of image name (its target desc) goes to the registry: all of it when
// the store holds all its manifests, else the host platform's manifest out of its index.
func pushTarget(ctx context.Context, cs content.Store, name string, desc ocispec.Descriptor) (ocispec.Descriptor, error) {
	whole, err := manifestsPresent(ctx, cs, desc)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading image %s: %w", name, err)
	}
	if whole {
		desc.Platform = nil // Push's word that all of the image goes
		return desc, nil
	}
	if !images.IsIndexType(desc.MediaType) {
		return ocispec.Descriptor{}, fmt.Errorf("image %s: its manifest %s is not in moatc's store: pull or import it again", name, desc.Digest)
	}
	m, found, err := hostManifest(ctx, cs, desc, platforms.Default())
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("reading image %s: %w", name, err)
	}
	if !found {
		return ocispec.Descriptor{}, fmt.Errorf("image %s holds no manifest for %s (the host's platform) in moatc's store, and not all of its platforms' either: pull or import it again",
			name, platforms.Format(platforms.DefaultSpec()))
	}
	return m, nil
}

// manifestsPresent says whether desc and every index and manifest under it are in the store.
func manifestsPresent(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (bool, error) {
	if _, err := cs.Info(ctx, desc.Digest); errdefs.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if !images.IsIndexType(desc.MediaType) {
		return true, nil
	}
	children, err := images.Children(ctx, cs, desc)
	if err != nil {
		return false, err
	}
	for _, ch := range children {
		if ok, err := manifestsPresent(ctx, cs, ch); err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// complete says whether desc and all it refers to are in the store. Non-distributable layers
// are never pushed, and need not be.
func complete(ctx context.Context, cs content.Store, desc ocispec.Descriptor) (bool, error) {
	if images.IsNonDistributable(desc.MediaType) {
		return true, nil
	}
	if _, err := cs.Info(ctx, desc.Digest); errdefs.IsNotFound(err) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if !images.IsManifestType(desc.MediaType) && !images.IsIndexType(desc.MediaType) {
		return true, nil
	}
	children, err := images.Children(ctx, cs, desc)
	if err != nil {
		return false, err
	}
	for _, ch := range children {
		if ok, err := complete(ctx, cs, ch); err != nil || !ok {
			return false, err
		}
	}
	return true, nil
}

// hostManifest is index desc's best manifest for platform m that is in the store, searching
// nested indexes too; its Platform is the index's entry's.
func hostManifest(ctx context.Context, cs content.Store, desc ocispec.Descriptor, m platforms.MatchComparer) (ocispec.Descriptor, bool, error) {
	b, err := content.ReadBlob(ctx, cs, desc)
	if err != nil {
		return ocispec.Descriptor{}, false, err
	}
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return ocispec.Descriptor{}, false, fmt.Errorf("index %s: %w", desc.Digest, err)
	}
	var cands []ocispec.Descriptor
	for _, d := range idx.Manifests {
		if d.Platform != nil && m.Match(*d.Platform) && images.IsManifestType(d.MediaType) ||
			images.IsIndexType(d.MediaType) && (d.Platform == nil || m.Match(*d.Platform)) {
			cands = append(cands, d)
		}
	}
	sort.SliceStable(cands, func(i, j int) bool {
		pi, pj := cands[i].Platform, cands[j].Platform
		return pi != nil && (pj == nil || m.Less(*pi, *pj))
	})
	for _, d := range cands {
		if _, err := cs.Info(ctx, d.Digest); errdefs.IsNotFound(err) {
			continue
		} else if err != nil {
			return ocispec.Descriptor{}, false, err
		}
		if !images.IsIndexType(d.MediaType) {
			return d, true, nil
		}
		if sub, ok, err := hostManifest(ctx, cs, d, m); err != nil || ok {
			return sub, ok, err
		}
	}
	return ocispec.Descriptor{}, false, nil
}

// fillIn fetches the blobs under desc that the store lacks (its indexes and manifests are
// there) from the registry of image name. A manifest's labels already hold the garbage
// collector's references to them.
func fillIn(ctx context.Context, cs content.Store, resolver remotes.Resolver, name string, desc ocispec.Descriptor, told func(ocispec.Descriptor)) error {
	var fetcher remotes.Fetcher
	h := images.HandlerFunc(func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
		if images.IsNonDistributable(d.MediaType) {
			return nil, images.ErrSkipDesc
		}
		_, err := cs.Info(ctx, d.Digest)
		switch {
		case err == nil:
			if images.IsManifestType(d.MediaType) || images.IsIndexType(d.MediaType) {
				return images.Children(ctx, cs, d)
			}
			return nil, nil
		case !errdefs.IsNotFound(err):
			return nil, err
		}
		if fetcher == nil {
			if fetcher, err = resolver.Fetcher(ctx, name); err != nil {
				return nil, err
			}
		}
		if told != nil {
			told(d)
		}
		if err := remotes.Fetch(ctx, cs, fetcher, d); err != nil {
			return nil, fmt.Errorf("fetching %s: %w", d.Digest, err)
		}
		return images.Children(ctx, cs, d)
	})
	// One at a time: the fetcher is made on the first blob missing.
	return images.Walk(ctx, h, desc)
}

// keychainCreds answers a registry's credential challenge from the docker config.
type keychainCreds struct {
	repo    ggcrname.Repository // the push's destination, for per-repository entries
	offered atomic.Bool         // whether the config held credentials for a registry asked
}

func newKeychainCreds(dest string) (*keychainCreds, error) {
	ref, err := ggcrname.ParseReference(dest, ggcrname.WeakValidation)
	if err != nil {
		return nil, fmt.Errorf("%q is not an image reference: %w", dest, err)
	}
	return &keychainCreds{repo: ref.Context()}, nil
}

// creds is docker.WithAuthCreds's function: host is the registry's as containerd speaks to it.
func (k *keychainCreds) creds(host string) (string, string, error) {
	if host == "registry-1.docker.io" {
		host = ggcrname.DefaultRegistry // the docker config names Docker Hub so
	}
	var target authn.Resource
	if strings.EqualFold(host, k.repo.RegistryStr()) {
		target = k.repo
	} else {
		r, err := ggcrname.NewRegistry(host, ggcrname.WeakValidation)
		if err != nil {
			return "", "", err
		}
		target = r
	}
	a, err := authn.DefaultKeychain.Resolve(target)
	if err != nil {
		return "", "", fmt.Errorf("reading credentials for %s from the docker config: %w", host, err)
	}
	cfg, err := a.Authorization()
	if err != nil {
		return "", "", fmt.Errorf("getting credentials for %s from the docker config: %w", host, err)
	}
	user, secret := cfg.Username, cfg.Password
	switch {
	case cfg.IdentityToken != "":
		user, secret = "", cfg.IdentityToken // containerd's spelling of a refresh token
	case secret == "" && cfg.Auth != "":
		b, err := base64.StdEncoding.DecodeString(cfg.Auth)
		if err != nil {
			return "", "", fmt.Errorf("the docker config's auth for %s is not base64: %w", host, err)
		}
		user, secret, _ = strings.Cut(string(b), ":")
	}
	if secret != "" {
		k.offered.Store(true)
	}
	return user, secret, nil
}

// pushError turns a failed push (or fetch) into what to do about it; doing says what failed.
func pushError(err error, doing, host string, offered bool) error {
	var st remoteerrors.ErrUnexpectedStatus
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", doing, err)
	case errors.Is(err, docker.ErrInvalidAuthorization),
		errors.As(err, &st) && (st.StatusCode == http.StatusUnauthorized || st.StatusCode == http.StatusForbidden):
		if offered {
			return fmt.Errorf("%s: registry %s refused the credentials of the docker config (%v): log in again: docker login %s, or fix them in ~/.docker/config.json ($DOCKER_CONFIG/config.json); check too that they may push to this repository", doing, host, err, host)
		}
		return fmt.Errorf("%s: registry %s wants credentials and the docker config holds none for it (%v): log in: docker login %s, or put credentials in ~/.docker/config.json ($DOCKER_CONFIG/config.json)", doing, host, err, host)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%s: registry %s speaks plain HTTP, not HTTPS: allow it with --insecure-registry %s", doing, host, host)
	case errors.As(err, &dnsErr), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("%s: registry %s is unreachable (%v): check its name and port, and that it runs", doing, host, err)
	case errors.As(err, &st):
		return fmt.Errorf("%s: registry %s answered %s: %w", doing, host, st.Status, err)
	}
	return fmt.Errorf("%s: registry %s: %w", doing, host, err)
}
