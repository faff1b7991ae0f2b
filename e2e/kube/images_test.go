package kube

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// startRegistry serves an OCI registry from this test process on 127.0.0.1: the host pushes
// to it, and the cluster's containerd, on the host too, pulls from it over plain HTTP.
func (c *cluster) startRegistry() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	for _, d := range []string{c.path("logs"), c.path("registry")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	logf, err := os.Create(c.path("logs", "registry.log"))
	if err != nil {
		return err
	}
	c.registry = &http.Server{Handler: registry.New(
		registry.Logger(log.New(logf, "", log.LstdFlags)),
		registry.WithBlobHandler(registry.NewDiskBlobHandler(c.path("registry"))),
	)}
	go func() {
		c.registry.Serve(ln)
		logf.Close()
	}()
	c.Registry = ln.Addr().String()
	return nil
}

// pushImage pushes img to the cluster's registry as repo:tag and returns the reference pods
// use.
func (c *cluster) pushImage(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(c.Registry+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("pushing %s: %v", ref, err)
	}
	return ref.String()
}

// pushBusybox pushes a busybox image (see busyboxImage) and returns its reference.
func (c *cluster) pushBusybox(t *testing.T) string {
	t.Helper()
	img, err := busyboxImage()
	if err != nil {
		t.Fatalf("making the busybox image: %v", err)
	}
	return c.pushImage(t, "busybox:latest", img)
}

// layerFile is one entry of an image layer: a regular file (data), a symlink (link) or a
// directory (dir).
type layerFile struct {
	name string
	data []byte
	link string
	dir  bool
	mode int64
}

// layerOf makes a layer of files, with a fixed time so equal content makes equal digests.
func layerOf(files []layerFile) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(0, 0)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(f.data))}
		switch {
		case f.dir:
			h.Typeflag, h.Name, h.Size = tar.TypeDir, f.name+"/", 0
		case f.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, f.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// imageOf makes a one-layer OCI image for this machine's platform.
func imageOf(layer v1.Layer, cfg v1.Config) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Config = "linux", runtime.GOARCH, cfg
	return mutate.ConfigFile(img, cf)
}

// busyboxImage is /bin/busybox (Debian's busybox-static) with a link per applet.
func busyboxImage() (v1.Image, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	files := []layerFile{
		{name: "bin", dir: true, mode: 0o755},
		{name: "etc", dir: true, mode: 0o755},
		{name: "tmp", dir: true, mode: 0o1777},
		{name: "bin/busybox", data: bin, mode: 0o755},
		{name: "etc/passwd", data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), mode: 0o644},
		{name: "etc/group", data: []byte("root:x:0:\nnogroup:x:65534:\n"), mode: 0o644},
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			files = append(files, layerFile{name: "bin/" + applet, link: "busybox", mode: 0o777})
		}
	}
	layer, err := layerOf(files)
	if err != nil {
		return nil, err
	}
	return imageOf(layer, v1.Config{Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}})
}

// pauseImageOf is the pod sandbox image: the static pause binary alone.
func pauseImageOf(pauseBin string) (v1.Image, error) {
	bin, err := os.ReadFile(pauseBin)
	if err != nil {
		return nil, err
	}
	layer, err := layerOf([]layerFile{{name: "pause", data: bin, mode: 0o755}})
	if err != nil {
		return nil, err
	}
	return imageOf(layer, v1.Config{Entrypoint: []string{"/pause"}})
}

// writeOCITar writes img as an OCI image layout tar named ref, the form `ctr images import`
// reads: the io.containerd.image.name annotation gives the full name.
func writeOCITar(img v1.Image, ref, path string) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), "oci-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	tag := ref[strings.LastIndex(ref, ":")+1:]
	annotations := map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
	if err := lp.AppendImage(img, layout.WithAnnotations(annotations)); err != nil {
		return err
	}
	return tarDir(dir, path)
}

// tarDir writes the regular files and directories under dir as a tar at path.
func tarDir(dir, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		h.Name, _ = filepath.Rel(dir, p)
		if err := tw.WriteHeader(h); err != nil || e.IsDir() {
			return err
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		_, err = io.Copy(tw, src)
		return err
	})
	return errors.Join(err, tw.Close(), f.Close())
}
