package engine

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// contextLimits bound what a build context may write under moatc's home (a workload's tar
// must not fill the host's disk or its inodes): the bytes of its files and its entries.
var contextLimits = struct{ bytes, entries int64 }{bytes: 4 << 30, entries: 500_000}

// extractContext unpacks a build context (a tar, plain or gzipped) into dir. Every write goes
// through an os.Root on dir: no name, and no symlink the tar made, reaches outside it.
// Symlinks are kept as symlinks (BuildKit's COPY copies them as such).
func extractContext(body io.Reader, dir string) error {
	br := bufio.NewReader(body)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return invalid("the build context is not a tar: %v", err)
		}
		defer gz.Close()
		r = gz
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("extracting the build context: %w", err)
	}
	defer root.Close()
	tr := tar.NewReader(r)
	var written, entries int64
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil // an empty body is an empty context
		}
		if err != nil {
			return invalid("the build context is not a tar: %v", err)
		}
		name, err := contextPath(h.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if entries++; entries > contextLimits.entries {
			return invalid("the build context has over %d files (moatc's limit): leave out what the image does not need with .dockerignore", contextLimits.entries)
		}
		if dir := path.Dir(name); dir != "." {
			if err := root.MkdirAll(dir, 0o755); err != nil {
				return invalid("extracting the build context: %v", err)
			}
		}
		mode := os.FileMode(h.Mode).Perm()
		switch h.Typeflag {
		case tar.TypeDir:
			if err := root.MkdirAll(name, 0o755); err != nil {
				return invalid("extracting the build context: %v", err)
			}
			root.Chmod(name, mode|0o700)
		case tar.TypeReg, tar.TypeRegA:
			root.Remove(name) // a symlink of the same name is replaced, not followed
			f, err := root.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode|0o600)
			if err != nil {
				return invalid("extracting the build context: %v", err)
			}
			var n int64
			n, err = io.Copy(f, io.LimitReader(tr, contextLimits.bytes-written+1))
			written += n
			if err == nil && written > contextLimits.bytes {
				err = invalid("the build context is over %d GiB (moatc's limit): leave out what the image does not need with .dockerignore", contextLimits.bytes>>30)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			var ae *apiError
			if errors.As(err, &ae) {
				return err
			}
			if err != nil {
				return fmt.Errorf("extracting the build context: %w", err)
			}
			root.Chmod(name, mode)
		case tar.TypeSymlink:
			root.Remove(name)
			if err := root.Symlink(h.Linkname, name); err != nil {
				return invalid("extracting the build context: %v", err)
			}
		case tar.TypeLink:
			target, err := contextPath(h.Linkname)
			if err != nil {
				return err
			}
			root.Remove(name)
			if err := root.Link(target, name); err != nil {
				return invalid("extracting the build context: %v", err)
			}
		default:
			// Devices, fifos: nothing a build context needs.
		}
	}
}

// contextPath is a tar entry's name, cleaned, relative to the context; one that climbs out
// is refused.
func contextPath(name string) (string, error) {
	p := path.Clean("/" + strings.ReplaceAll(name, "\\", "/"))
	if strings.Contains(name, "\x00") {
		return "", invalid("the build context has a bad file name %q", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", invalid("the build context's file %q climbs out of the context", name)
		}
	}
	if p == "/" {
		return ".", nil
	}
	return strings.TrimPrefix(p, "/"), nil
}
