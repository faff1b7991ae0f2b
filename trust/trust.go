// Package trust keeps the person's consent for the policy keys of config files. A workspace's
// moatc.yaml is the workload's to write, so a setting that widens what the workload reaches
// (sandbox: none, mounts, ports, network.host, ...: see config.Setting) counts only when the
// person has trusted that exact content with `moatc trust`, the way direnv's allow and mise's
// trust work. The record is the file's path and the sha256 of its bytes, kept in
// MOATC_HOME/trust.json (0600), out of every run's reach.
package trust

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/state"
)

// Entry is one trusted file.
type Entry struct {
	Path    string    `json:"path"`
	Sum     string    `json:"sha256"`
	Trusted time.Time `json:"trusted"`
	Keys    []string  `json:"keys"` // the policy keys the file set when it was trusted
}

type storeFile struct {
	Version int              `json:"version"`
	Files   map[string]Entry `json:"files"`
}

const version = 1

// Store is the trust record of one moatc home.
type Store struct{ path string }

// Open returns the store of a moatc home; nothing is read or written yet.
func Open(home string) *Store { return &Store{path: filepath.Join(home, "trust.json")} }

// Path is the store's file.
func (s *Store) Path() string { return s.path }

// CorruptError says the store cannot be read as moatc wrote it. moatc then trusts nothing.
type CorruptError struct {
	Path string
	Why  string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("the trust store %s %s, so moatc trusts no config file until it is fixed: "+
		"remove it (`rm %s`) and trust your files again with `moatc trust PATH`", e.Path, e.Why, e.Path)
}

// UntrustedError stops a run whose config file sets policy keys the person has not trusted.
type UntrustedError struct {
	File    *config.File
	Changed bool // trusted before, with other content
}

func (e *UntrustedError) Error() string {
	var b strings.Builder
	why := "you have not trusted this file"
	if e.Changed {
		why = "the file changed since you trusted it"
	}
	fmt.Fprintf(&b, "%s sets %s what the workload can reach, and %s:\n",
		e.File.Path, plural(len(e.File.PolicyKeys()), "a policy key, which widens", "policy keys, which widen"), why)
	for _, s := range e.File.Policy {
		fmt.Fprintf(&b, "  %s: %s\n", e.File.Where(s), s)
	}
	fmt.Fprintf(&b, "The workload can write this file. If these settings are yours, trust it as it is now:\n  moatc trust %s\n", shellQuote(e.File.Path))
	b.WriteString("or remove them and give what you need as flags, which always count (--no-sandbox, -m, -p, --host-port).")
	return b.String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+=:,@") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(config.Printable(s, 4096), "'", `'\''`) + "'"
}

// Check returns nil when f sets no policy keys or the person trusted exactly these bytes at
// this path; an *UntrustedError when not; a *CorruptError when the store cannot be read.
func (s *Store) Check(f *config.File) error {
	if len(f.Policy) == 0 {
		return nil
	}
	sf, err := s.load()
	if err != nil {
		return err
	}
	e, ok := sf.Files[key(f.Path)]
	if ok && e.Sum == f.Sum {
		return nil
	}
	return &UntrustedError{File: f, Changed: ok}
}

// Trust records f's content as trusted and returns the record.
func (s *Store) Trust(f *config.File) (Entry, error) {
	e := Entry{Path: key(f.Path), Sum: f.Sum, Trusted: time.Now().UTC(), Keys: f.PolicyKeys()}
	if e.Keys == nil {
		e.Keys = []string{}
	}
	err := s.update(func(sf *storeFile) { sf.Files[e.Path] = e })
	return e, err
}

// Untrust forgets the file at path; it reports whether it was trusted.
func (s *Store) Untrust(path string) (bool, error) {
	found := false
	err := s.update(func(sf *storeFile) {
		if _, ok := sf.Files[key(path)]; ok {
			found = true
			delete(sf.Files, key(path))
		}
	})
	return found, err
}

// List returns the trusted files, by path.
func (s *Store) List() ([]Entry, error) {
	sf, err := s.load()
	if err != nil {
		return nil, err
	}
	out := make([]Entry, 0, len(sf.Files))
	for _, e := range sf.Files {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

func key(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return filepath.Clean(path)
}

// load reads the store. A missing store is empty; anything unexpected is a CorruptError,
// never an empty store (that would be harmless) or a partial one (that might trust wrongly).
func (s *Store) load() (*storeFile, error) {
	sf := &storeFile{Version: version, Files: map[string]Entry{}}
	fi, err := os.Lstat(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return sf, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the trust store: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &CorruptError{Path: s.path, Why: "is not a regular file"}
	}
	// Writable by others, anyone could trust for the person.
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, &CorruptError{Path: s.path, Why: fmt.Sprintf("is writable by others (mode %04o)", fi.Mode().Perm())}
	}
	b, err := os.ReadFile(s.path)
	if err != nil {
		return nil, fmt.Errorf("reading the trust store: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(sf); err != nil {
		return nil, &CorruptError{Path: s.path, Why: fmt.Sprintf("cannot be read (%v)", err)}
	}
	if sf.Version != version {
		return nil, &CorruptError{Path: s.path, Why: fmt.Sprintf("has version %d, not %d", sf.Version, version)}
	}
	if sf.Files == nil {
		sf.Files = map[string]Entry{}
	}
	for p, e := range sf.Files {
		if p != e.Path || !filepath.IsAbs(p) || len(e.Sum) != 64 || strings.Trim(e.Sum, "0123456789abcdef") != "" {
			return nil, &CorruptError{Path: s.path, Why: fmt.Sprintf("has a malformed entry for %q", config.Printable(p, 200))}
		}
	}
	return sf, nil
}

// update changes the store under its lock and writes it atomically.
func (s *Store) update(fn func(*storeFile)) error {
	if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
		return fmt.Errorf("writing the trust store: %w", err)
	}
	unlock, err := state.Lock(s.path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	sf, err := s.load()
	if err != nil {
		return err
	}
	fn(sf)
	b, err := json.MarshalIndent(sf, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, append(b, '\n'), 0o600)
}
