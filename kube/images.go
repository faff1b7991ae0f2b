package kube

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// ImageError: the cluster cannot pull one of the run's images as it is named.
type ImageError struct {
	Image string
	Why   string
}

func (e *ImageError) Error() string {
	return fmt.Sprintf("the cluster cannot pull %s: %s.\nGive --registry HOST[:PORT][/PATH], a registry the cluster's nodes pull from and you can push to (credentials from ~/.docker/config.json, as `docker login` writes them): moatc pushes the run's images there first (as `moatc image push` does).", e.Image, e.Why)
}

// RegistryRef is where an image of moatc's store goes in registry: the image's own path
// below it (docker.io/library/busybox:latest -> REGISTRY/library/busybox:latest).
func RegistryRef(registry, image string) (string, error) {
	ref, err := name.ParseReference(image)
	if err != nil {
		return "", fmt.Errorf("naming %s in %s: %w", image, registry, err)
	}
	repo := ref.Context().RepositoryStr()
	tag := "latest"
	if t, ok := ref.(name.Tag); ok {
		tag = t.TagStr()
	}
	return strings.TrimSuffix(registry, "/") + "/" + repo + ":" + tag, nil
}

// insecure reports whether registry is spoken to over plain HTTP: loopback, or listed.
func insecure(registry string, listed []string) bool {
	host := strings.SplitN(registry, "/", 2)[0]
	if slices.Contains(listed, host) {
		return true
	}
	h := host
	if i := strings.LastIndex(h, ":"); i > 0 && !strings.HasSuffix(h, "]") {
		h = h[:i]
	}
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "[::1]"
}

func nameOpts(registry string, listed []string) []name.Option {
	if insecure(registry, listed) {
		return []name.Option{name.Insecure}
	}
	return nil
}

// CheckPullable asks the image's registry, from here, whether it has image. A cluster's
// nodes may see other registries than this machine, but an image no registry here serves is
// almost always one moatc made: only --registry helps then.
func CheckPullable(ctx context.Context, image string) error {
	ref, err := name.ParseReference(image)
	if err != nil {
		return &ImageError{image, err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := remote.Head(ref, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return &ImageError{image, fmt.Sprintf("it is in moatc's store, and %s did not serve it to this machine (%v)", ref.Context().RegistryStr(), err)}
	}
	return nil
}

// HelperBinary finds moatc-pod: next to moatc, else in the prefix.
func HelperBinary(prefix string) (string, error) {
	var tried []string
	if exe, err := os.Executable(); err == nil {
		tried = append(tried, filepath.Join(filepath.Dir(exe), "moatc-pod"))
	}
	tried = append(tried, filepath.Join(prefix, "bin", "moatc-pod"))
	for _, p := range tried {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", fmt.Errorf("moatc-pod, the helper a cluster run's pods run, is not installed (looked at %s): run `make install` in the moatc source tree", strings.Join(tried, ", "))
}

// helperImage is the one-file image of moatc-pod, named by the binary's digest so that a
// cluster pulls it once per moatc version.
func helperImage(bin string) (v1.Image, string, error) {
	b, err := os.ReadFile(bin)
	if err != nil {
		return nil, "", fmt.Errorf("reading %s: %w", bin, err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{Name: "moatc-pod", Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, "", err
	}
	tw.Write(b)
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return nil, "", fmt.Errorf("making the helper image: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, "", fmt.Errorf("making the helper image: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, "", err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Env = []string{"PATH=/"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(b)
	return img, hex.EncodeToString(sum[:])[:16], nil
}

// PushHelper pushes the moatc-pod image to registry and returns its reference by digest.
func PushHelper(ctx context.Context, bin, registry string, insecureRegs []string) (string, error) {
	img, tag, err := helperImage(bin)
	if err != nil {
		return "", err
	}
	dest := strings.TrimSuffix(registry, "/") + "/moatc/pod:" + tag
	ref, err := name.ParseReference(dest, nameOpts(registry, insecureRegs)...)
	if err != nil {
		return "", fmt.Errorf("naming the helper image %s: %w", dest, err)
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return "", pushError(dest, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return ref.Context().Name() + "@" + d.String(), nil
}

func pushError(dest string, err error) error {
	hint := "check that the registry is reachable from here"
	if strings.Contains(err.Error(), "UNAUTHORIZED") || strings.Contains(err.Error(), "DENIED") {
		hint = "log in: docker login " + strings.SplitN(dest, "/", 2)[0]
	}
	return fmt.Errorf("pushing %s: %w (%s)", dest, err, hint)
}
