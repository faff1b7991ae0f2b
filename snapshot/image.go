package snapshot

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/platforms"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// LabelLocal marks images made on this machine from a rootfs rather than pulled.
const LabelLocal = "moatc.built-locally"

// Image describes an image to make from a root filesystem directory.
type Image struct {
	Name     string   // full reference, e.g. docker.io/library/busybox:latest
	Rootfs   string   // directory holding the root filesystem
	Env      []string // default PATH=... when empty
	Cmd      []string // default /bin/sh when empty
	Platform string   // e.g. linux/arm64; default this host's (the rootfs is usually made here)
}

// WriteOCIFile writes img as an OCI image layout tar to path, atomically: a failed write
// leaves no partial archive behind.
func WriteOCIFile(path string, img Image) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".pack-*")
	if err != nil {
		return fmt.Errorf("writing image %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if err := WriteOCI(f, img); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing image %s: %w", path, err)
	}
	return os.Rename(f.Name(), path)
}

// WriteOCI writes img as an OCI image layout tar (one uncompressed layer) to w. The index
// carries io.containerd.image.name, which containerd's import uses as the image name.
func WriteOCI(w io.Writer, img Image) error {
	plat, err := img.check()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "moatc-pack-*")
	if err != nil {
		return fmt.Errorf("packing image %s: %w", img.Name, err)
	}
	defer os.RemoveAll(dir)
	if err := writeLayout(dir, img, plat); err != nil {
		return fmt.Errorf("packing image %s: %w", img.Name, err)
	}
	if err := tarDir(w, dir); err != nil {
		return fmt.Errorf("writing image archive: %w", err)
	}
	return nil
}

// Check reports what would keep img from being packed (run it before starting anything that
// waits on the archive).
func (img Image) Check() error {
	_, err := img.check()
	return err
}

func (img Image) check() (v1.Platform, error) {
	if fi, err := os.Stat(img.Rootfs); err != nil || !fi.IsDir() {
		return v1.Platform{}, fmt.Errorf("packing image %s: %s is not a directory; give a root filesystem directory", img.Name, img.Rootfs)
	}
	plat, err := platformOf(img.Platform)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("packing image %s: %w", img.Name, err)
	}
	return plat, nil
}

func platformOf(s string) (v1.Platform, error) {
	p := platforms.DefaultSpec()
	if s != "" {
		var err error
		if p, err = platforms.Parse(s); err != nil {
			return v1.Platform{}, fmt.Errorf("platform %q: %w; write one such as linux/amd64", s, err)
		}
	}
	return v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant}, nil
}

// writeLayout writes the OCI image layout of img into dir.
func writeLayout(dir string, img Image, plat v1.Platform) error {
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	layer, err := writeLayer(dir, img.Rootfs)
	if err != nil {
		return fmt.Errorf("writing layer of %s: %w", img.Rootfs, err)
	}
	image, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1),
		mutate.Addendum{Layer: layer, MediaType: types.OCIUncompressedLayer})
	if err != nil {
		return err
	}
	image = mutate.ConfigMediaType(image, types.OCIConfigJSON)
	cf, err := image.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: time.Now().UTC()}
	cf.OS, cf.Architecture, cf.Variant = plat.OS, plat.Architecture, plat.Variant
	cf.Config.Env, cf.Config.Cmd = img.Env, img.Cmd
	if len(cf.Config.Env) == 0 {
		cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if len(cf.Config.Cmd) == 0 {
		cf.Config.Cmd = []string{"/bin/sh"}
	}
	cf.Config.Labels = map[string]string{LabelLocal: "true"}
	if image, err = mutate.ConfigFile(image, cf); err != nil {
		return err
	}
	return lp.AppendImage(image, layout.WithPlatform(plat),
		layout.WithAnnotations(map[string]string{"io.containerd.image.name": img.Name}))
}

// writeLayer tars rootfs straight into the layout's blob directory, where the layout writer
// finds it already written (no second copy of the largest file).
func writeLayer(dir, rootfs string) (v1.Layer, error) {
	blobs := filepath.Join(dir, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(blobs, ".layer-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	err = tarDir(io.MultiWriter(f, h), rootfs)
	size, serr := f.Seek(0, io.SeekCurrent)
	if err = errors.Join(err, serr, f.Close()); err != nil {
		return nil, err
	}
	l := &fileLayer{size: size, hash: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}
	l.path = filepath.Join(blobs, l.hash.Hex)
	return l, os.Rename(f.Name(), l.path)
}

// fileLayer is an uncompressed layer tar in a file: its blob is the tar itself, so its digest
// and diff id are the same.
type fileLayer struct {
	path string
	size int64
	hash v1.Hash
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.hash, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.hash, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) {
	return types.OCIUncompressedLayer, nil
}
