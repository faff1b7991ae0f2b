package ctrd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/http/httpproxy"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImageNotFoundError says an image is not in the store and how to get it there.
type ImageNotFoundError struct{ Ref string }

func (e *ImageNotFoundError) Error() string {
	return fmt.Sprintf("image %s is not in moatc's image store: pull it with `moatc image pull %s`, import a tar with `moatc image import FILE`, or make the local base images with `make base-images`", e.Ref, e.Ref)
}

// Normalize turns a short name into a full reference as Docker does: busybox becomes
// docker.io/library/busybox:latest.
func Normalize(ref string) (string, error) {
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", fmt.Errorf("%q is not an image reference (e.g. debian:bookworm-slim or registry.example/team/img:tag): %w", ref, err)
	}
	return n.String(), nil
}

// Image returns an image from the store, unpacked for snapshotter.
func (c *Client) Image(ctx context.Context, ref, snapshotter string) (containerd.Image, error) {
	name, err := Normalize(ref)
	if err != nil {
		return nil, err
	}
	img, err := c.GetImage(ctx, name)
	if errdefs.IsNotFound(err) {
		return nil, &ImageNotFoundError{Ref: ref}
	}
	if err != nil {
		return nil, fmt.Errorf("looking up image %s: %w", name, err)
	}
	ok, err := img.IsUnpacked(ctx, snapshotter)
	if err != nil {
		return nil, fmt.Errorf("checking image %s: %w", name, err)
	}
	if !ok {
		ctx, done, err := c.OwnedLease(ctx)
		if err != nil {
			return nil, err
		}
		defer done()
		if err := img.Unpack(ctx, snapshotter); err != nil {
			return nil, fmt.Errorf("unpacking image %s: %w", name, err)
		}
	}
	return img, nil
}

// Import reads an OCI image layout tar or a docker-archive tar, stores and unpacks its images,
// and returns their names. extraName names an image whose archive carries no name.
func (c *Client) Import(ctx context.Context, r io.Reader, snapshotter, extraName string) ([]string, error) {
	var opts []containerd.ImportOpt
	if extraName != "" {
		n, err := Normalize(extraName)
		if err != nil {
			return nil, err
		}
		opts = append(opts, containerd.WithIndexName(n))
	}
	// Docker's `docker save` names images by tag; OCI layouts by annotation. Both are normalized.
	opts = append(opts, containerd.WithImageRefTranslator(func(s string) string {
		if n, err := Normalize(s); err == nil {
			return n
		}
		return s
	}), containerd.WithSkipDigestRef(func(string) bool { return true }))
	ctx, done, err := c.OwnedLease(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	imgs, err := c.Client.Import(ctx, r, opts...)
	if err != nil {
		return nil, fmt.Errorf("importing image archive (an OCI layout or `docker save` tar is expected): %w", err)
	}
	if len(imgs) == 0 {
		return nil, errors.New("importing image archive: it names no image; give one with --name")
	}
	var names []string
	for _, i := range imgs {
		img := containerd.NewImage(c.Client, i)
		if err := img.Unpack(ctx, snapshotter); err != nil {
			return names, fmt.Errorf("unpacking image %s: %w", i.Name, err)
		}
		names = append(names, i.Name)
	}
	return names, nil
}

// Pull fetches ref from its registry and unpacks it. Registries on localhost are spoken to
// over plain HTTP, as Docker does. progress, if set, is told of each blob fetched.
func (c *Client) Pull(ctx context.Context, ref, snapshotter string, progress func(ocispec.Descriptor), opts ...PullOpt) (containerd.Image, error) {
	name, err := Normalize(ref)
	if err != nil {
		return nil, err
	}
	var po pullOptions
	for _, o := range opts {
		o(&po)
	}
	ropts := []containerd.RemoteOpt{
		containerd.WithResolver(po.resolver()), containerd.WithPullUnpack, containerd.WithPullSnapshotter(snapshotter),
	}
	if progress != nil {
		ropts = append(ropts, containerd.WithImageHandler(images.HandlerFunc(
			func(ctx context.Context, d ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				progress(d)
				return nil, nil
			})))
	}
	ctx, done, err := c.OwnedLease(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	img, err := c.Client.Pull(ctx, name, ropts...)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", name, err)
	}
	return img, nil
}

// PullOpt changes how Pull speaks to the registry.
type PullOpt func(*pullOptions)

type pullOptions struct {
	creds     func(host string) (string, string, error)
	dialCheck func(netip.Addr) error
	insecure  []string // registries spoken to over plain HTTP besides localhost's; see plainHTTP
}

// resolver is the docker resolver the options make, Pull's and Push's: localhost registries
// (and o.insecure) over plain HTTP, o.creds answering a registry's challenge.
func (o pullOptions) resolver() remotes.Resolver {
	hostOpts := []docker.RegistryOpt{docker.WithPlainHTTP(plainHTTP(o.insecure))}
	if o.dialCheck != nil {
		hostOpts = append(hostOpts, docker.WithClient(checkedClient(o.dialCheck)))
	}
	if o.creds != nil {
		hostOpts = append(hostOpts, docker.WithAuthorizer(docker.NewDockerAuthorizer(docker.WithAuthCreds(o.creds))))
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(hostOpts...)})
}

// plainHTTP says which registries are spoken to over plain HTTP: those on localhost (as
// Docker does), and those insecure names, each a HOST (any port) or HOST:PORT (that port).
func plainHTTP(insecure []string) func(host string) (bool, error) {
	return func(host string) (bool, error) {
		if ok, err := docker.MatchLocalhost(host); ok || err != nil {
			return ok, err
		}
		h, _, err := net.SplitHostPort(host)
		if err != nil {
			h = host // no port
		}
		for _, i := range insecure {
			if _, _, err := net.SplitHostPort(i); err == nil {
				if strings.EqualFold(i, host) {
					return true, nil
				}
			} else if strings.EqualFold(strings.Trim(i, "[]"), strings.Trim(h, "[]")) {
				return true, nil
			}
		}
		return false, nil
	}
}

// WithDialCheck has Pull ask check before each connection it opens, with the address it is
// about to connect to (after name resolution and on every redirect): a registry name that
// resolves anew, or a blob redirect, cannot take the pull where check refuses.
func WithDialCheck(check func(netip.Addr) error) PullOpt {
	return func(o *pullOptions) { o.dialCheck = check }
}

// checkedClient is an HTTP client whose every connection is first put to check.
func checkedClient(check func(netip.Addr) error) *http.Client {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("connecting to %s: %w", address, err)
			}
			return check(ap.Addr())
		}}
	t := http.DefaultTransport.(*http.Transport).Clone()
	if p := httpproxy.FromEnvironment(); p.HTTPSProxy != "" || p.HTTPProxy != "" {
		return &http.Client{Transport: t} // the proxy chooses where a pull goes; only its address would be seen here
	}
	t.DialContext = d.DialContext
	return &http.Client{Transport: t}
}

// WithCredentials gives Pull the registry's user and secret for a host (an identity token
// has user ""), asked when the registry wants them.
func WithCredentials(creds func(host string) (user, secret string, err error)) PullOpt {
	return func(o *pullOptions) { o.creds = creds }
}

// ImageInfo is one row of `moatc image ls`.
type ImageInfo struct {
	Name    string            `json:"name"`
	Digest  string            `json:"digest"`
	Size    int64             `json:"size"`
	Created string            `json:"created"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// Images lists the store.
func (c *Client) Images(ctx context.Context) ([]ImageInfo, error) {
	imgs, err := c.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing images: %w", err)
	}
	var out []ImageInfo
	for _, i := range imgs {
		size, _ := containerd.NewImage(c.Client, i).Size(ctx)
		out = append(out, ImageInfo{Name: i.Name, Digest: i.Target.Digest.String(), Size: size,
			Created: i.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), Labels: i.Labels})
	}
	return out, nil
}

// RemoveImage deletes an image by name.
func (c *Client) RemoveImage(ctx context.Context, ref string) error {
	name, err := Normalize(ref)
	if err != nil {
		return err
	}
	if err := c.ImageService().Delete(ctx, name, images.SynchronousDelete()); err != nil {
		if errdefs.IsNotFound(err) {
			return &ImageNotFoundError{Ref: ref}
		}
		return fmt.Errorf("removing image %s: %w", name, err)
	}
	return nil
}

// ShortName shows docker.io/library/x:tag as x:tag, as Docker does.
func ShortName(name string) string {
	n, err := reference.ParseNormalizedNamed(name)
	if err != nil {
		return name
	}
	return reference.FamiliarString(n)
}
