package config

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// MaxSize is the largest config file moatc reads. The file is the workload's to write: a
// multi-megabyte one only costs the person time and memory.
const MaxSize = 1 << 20

// Find returns the config file of a workspace, or "" when it has none. Whatever carries one
// of the Names counts, a symlink or a directory too, so that Load refuses it rather than
// quietly reading the next name.
func Find(workspace string) string {
	for _, n := range Names {
		p := filepath.Join(workspace, n)
		if _, err := os.Lstat(p); err == nil {
			return p
		}
	}
	return ""
}

// Load reads the workspace's config file; a workspace without one yields an empty File.
// The workload can write the file, so it is read without following a symlink, only when it
// is a regular file of at most MaxSize bytes, and nothing of what a refused file points to
// is ever read (so no byte of it can show up in a message).
func Load(workspace string) (*File, error) {
	p := Find(workspace)
	if p == "" {
		return &File{}, nil
	}
	b, err := readFile(workspace, filepath.Base(p))
	if err != nil {
		return nil, err
	}
	return Parse(p, b)
}

func readFile(dir, name string) ([]byte, error) {
	path := filepath.Join(dir, name)
	refuse := func(format string, a ...any) error {
		return &Error{Path: path, Msg: fmt.Sprintf(format, a...)}
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("reading config: opening %s: %w", dir, err)
	}
	defer unix.Close(dfd)
	// O_NONBLOCK: a FIFO named moatc.yaml must not hang moatc before fstat refuses it.
	fd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ELOOP) {
		return nil, refuse("is a symbolic link; moatc reads only a regular file in the workspace, never what a link points to: replace the link with the file itself")
	}
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, refuse("is not a regular file; moatc reads its settings only from a regular file: remove it, or put the settings in a file of that name")
	}
	if st.Size > MaxSize {
		return nil, refuse("is %d bytes, more than the %d a config file may have; a moatc.yaml holds a few settings: shorten it", st.Size, MaxSize)
	}
	b, err := io.ReadAll(io.LimitReader(f, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	if len(b) > MaxSize {
		return nil, refuse("grew past %d bytes while being read; a config file may have at most that", MaxSize)
	}
	return b, nil
}
