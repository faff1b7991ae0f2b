package snapshot

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// LabelLocal marks images made on this machine from a rootfs rather than pulled.
const LabelLocal = "moatc.built-locally"

// Image describes an image to make from a root filesystem directory.
type Image struct {
	Name   string   // full reference, e.g. docker.io/library/busybox:latest
	Rootfs string   // directory holding the root filesystem
	Env    []string // default PATH=... when empty
	Cmd    []string // default /bin/sh when empty
}

// WriteOCI writes img as an OCI image layout tar (one uncompressed layer) to w. The index
// carries io.containerd.image.name, which containerd's import uses as the image name.
func WriteOCI(w io.Writer, img Image) error {
	layer, err := os.CreateTemp("", "moatc-layer-*.tar")
	if err != nil {
		return fmt.Errorf("writing layer: %w", err)
	}
	defer os.Remove(layer.Name())
	defer layer.Close()
	h := sha256.New()
	if err := tarDir(io.MultiWriter(layer, h), img.Rootfs); err != nil {
		return fmt.Errorf("writing layer of %s: %w", img.Rootfs, err)
	}
	size, err := layer.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	layerDigest := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))

	env, cmd := img.Env, img.Cmd
	if len(env) == 0 {
		env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	}
	if len(cmd) == 0 {
		cmd = []string{"/bin/sh"}
	}
	created := time.Now().UTC()
	config, err := json.Marshal(ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		Config:   ocispec.ImageConfig{Env: env, Cmd: cmd, Labels: map[string]string{LabelLocal: "true"}},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{layerDigest}},
	})
	if err != nil {
		return err
	}
	configDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
	manifest, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    configDesc,
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: layerDigest, Size: size}},
	})
	if err != nil {
		return err
	}
	manifestDesc := ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(manifest), Size: int64(len(manifest)),
		Annotations: map[string]string{"io.containerd.image.name": img.Name},
		Platform:    &ocispec.Platform{Architecture: "amd64", OS: "linux"},
	}
	index, err := json.Marshal(ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{manifestDesc},
	})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	file := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	blob := func(d digest.Digest) string { return "blobs/sha256/" + d.Encoded() }
	for _, f := range []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blob(configDesc.Digest), config},
		{blob(manifestDesc.Digest), manifest},
	} {
		if err := file(f.name, f.data); err != nil {
			return fmt.Errorf("writing image archive: %w", err)
		}
	}
	if _, err := layer.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: blob(layerDigest), Mode: 0o644, Size: size, Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("writing image archive: %w", err)
	}
	if _, err := io.Copy(tw, layer); err != nil {
		return fmt.Errorf("writing image archive: %w", err)
	}
	return tw.Close()
}

// tarDir writes dir as a tar with paths relative to it, keeping owners, modes, symlinks and
// hard links. Device nodes and sockets are left out: the runtime provides /dev.
func tarDir(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeSocket|fs.ModeNamedPipe) != 0 {
			return nil
		}
		target := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return err
		}
		hdr.Name = rel
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
			if fi.Mode().IsRegular() && st.Nlink > 1 {
				key := [2]uint64{st.Dev, st.Ino}
				if first, seen := links[key]; seen {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					links[key] = rel
				}
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
