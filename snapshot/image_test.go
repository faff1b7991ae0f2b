package snapshot

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// untar extracts the regular files and directories of an archive into dir.
func untar(t *testing.T, r io.Reader, dir string) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		p := filepath.Join(dir, h.Name)
		if h.Typeflag == tar.TypeDir {
			os.MkdirAll(p, 0o755)
			continue
		}
		b, _ := io.ReadAll(tr)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func rootfs(t *testing.T) string {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "hello"), []byte("#!/bin/sh\necho hi\n"), 0o755)
	os.Symlink("hello", filepath.Join(dir, "bin", "hi"))
	return dir
}

// A packed image is a valid OCI layout (digests and sizes check out) for this host's platform,
// named for containerd's import, labelled as built locally, holding the rootfs in its layer.
func TestWriteOCI(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteOCI(&buf, Image{Name: "docker.io/library/t:latest", Rootfs: rootfs(t)}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	names := untar(t, &buf, dir)
	for _, n := range names {
		if strings.Contains(n, ".layer-") || strings.HasPrefix(n, "/") || strings.Contains(n, "..") {
			t.Errorf("archive entry %q", n)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("index: %+v, %v", im, err)
	}
	d := im.Manifests[0]
	if d.Annotations["io.containerd.image.name"] != "docker.io/library/t:latest" {
		t.Errorf("annotations %v", d.Annotations)
	}
	if d.Platform == nil || d.Platform.OS != "linux" || d.Platform.Architecture != runtime.GOARCH {
		t.Errorf("index platform %+v, want linux/%s", d.Platform, runtime.GOARCH)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	// Fast: ggcr's layout reader takes every layer for gzipped; the layer is checked below.
	if err := validate.Image(img, validate.Fast); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != runtime.GOARCH || cf.OS != "linux" || cf.Config.Labels[LabelLocal] != "true" || cf.Config.Cmd[0] != "/bin/sh" {
		t.Errorf("config %+v", cf)
	}
	ls, _ := img.Layers()
	if mt, _ := ls[0].MediaType(); mt != types.OCIUncompressedLayer {
		t.Errorf("layer media type %s", mt)
	}
	rc, err := ls[0].Compressed() // the blob as stored
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	blob, _ := io.ReadAll(rc)
	dg, _ := ls[0].Digest()
	if sum := sha256.Sum256(blob); hex.EncodeToString(sum[:]) != dg.Hex {
		t.Errorf("layer blob does not match its digest %s", dg)
	}
	if dd, _ := ls[0].DiffID(); len(cf.RootFS.DiffIDs) != 1 || cf.RootFS.DiffIDs[0] != dd || dd != dg {
		t.Errorf("diff ids %v, layer %s", cf.RootFS.DiffIDs, dd)
	}
	got := untar(t, bytes.NewReader(blob), t.TempDir())
	if strings.Join(got, " ") != "bin/ bin/hello bin/hi" {
		t.Errorf("layer holds %q", got)
	}
}

func TestWriteOCIPlatform(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteOCI(&buf, Image{Name: "t", Rootfs: rootfs(t), Platform: "linux/arm64"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	untar(t, &buf, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	if p := im.Manifests[0].Platform; p == nil || p.Architecture != "arm64" {
		t.Errorf("platform %+v, want arm64", p)
	}
	if err := WriteOCI(io.Discard, Image{Name: "t", Rootfs: rootfs(t), Platform: "linux/not an arch/x/y"}); err == nil {
		t.Error("bad platform: no error")
	}
}

// Not a directory: an error, and -o leaves no file.
func TestWriteOCIFileBadRootfs(t *testing.T) {
	out := filepath.Join(t.TempDir(), "x.tar")
	f := filepath.Join(t.TempDir(), "file")
	os.WriteFile(f, nil, 0o644)
	for _, r := range []string{f, filepath.Join(t.TempDir(), "missing")} {
		if err := WriteOCIFile(out, Image{Name: "t", Rootfs: r}); err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Errorf("rootfs %s: %v", r, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Dir(out)); len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}
