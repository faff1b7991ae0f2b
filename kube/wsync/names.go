package wsync

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// Kernel limits, checked up front so that an oversized name is refused while reading the
// stream rather than failing half-way through applying it.
const (
	maxPath   = 4095
	maxNameLn = 255
)

func invalid(name, why string) error {
	return fmt.Errorf("checking entry %q: %s: %w", name, why, ErrInvalid)
}

// entryName returns h's path, validated: relative, clean, no ".." component, within the
// kernel's limits. A directory may carry one trailing slash, as tar writes them. root is
// true for the workspace root's own entry ("." or "./"), which callers ignore.
func entryName(h *tar.Header) (name string, root bool, err error) {
	name = h.Name
	if h.Typeflag == tar.TypeDir {
		name = strings.TrimSuffix(name, "/")
		if name == "." {
			return name, true, nil
		}
	}
	return name, false, checkName(h.Name, name)
}

// checkName validates name (orig is what the stream said, for the message).
func checkName(orig, name string) error {
	if why := nameProblem(name); why != "" {
		return invalid(orig, why)
	}
	return nil
}

// nameProblem says what is wrong with name, or "" if nothing is.
func nameProblem(name string) string {
	switch {
	case name == "" || name == ".":
		return "empty name"
	case strings.HasPrefix(name, "/"):
		return "absolute name"
	case strings.ContainsRune(name, 0):
		return "NUL in name"
	case len(name) > maxPath:
		return "name too long"
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "name escapes the workspace"
		}
		if len(c) > maxNameLn {
			return "name component too long"
		}
	}
	if path.Clean(name) != name {
		return "name not clean"
	}
	return ""
}

// checkTarget validates a symlink target: any text is allowed (it is data, never followed
// here) as long as the kernel can store it.
func checkTarget(name, target string) error {
	if target == "" || len(target) > maxPath || strings.ContainsRune(target, 0) {
		return invalid(name, "unusable symlink target")
	}
	return nil
}

// checkEnd validates the end marker against the number of entries read before it.
func checkEnd(h *tar.Header, n int) error {
	v, ok := h.PAXRecords[endRecord]
	if !ok || h.Name != endName {
		return invalid(h.Name, "unexpected global header")
	}
	if got, err := strconv.Atoi(v); err != nil || got != n {
		return invalid(h.Name, fmt.Sprintf("end marker counts %s entries, stream had %d", v, n))
	}
	return nil
}

// readErr wraps an error from the tar reader; a malformed or cut stream is ErrInvalid,
// while a failing connection or a cancelled context keeps its own error.
func readErr(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrInsecurePath) {
		return fmt.Errorf("reading stream: %w: %w", err, ErrInvalid)
	}
	return fmt.Errorf("reading stream: %w", err)
}

// errTruncated reports a stream that ended before its end marker.
func errTruncated() error {
	return fmt.Errorf("reading stream: ended without its end marker (truncated?): %w", ErrInvalid)
}

// ctxReader stops a stream read when ctx is done, so a stalled exec stream can be
// abandoned by cancelling.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
