package grant

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moatc/moatc/state"
)

const (
	version  = 1
	keyEnv   = "MOATC_GRANT_KEY"
	keySize  = 32
	nonceLen = 12
	again    = "store your grants again with `moatc grant`"
)

// entry is a grant as stored: its token sealed with the store's key.
type entry struct {
	Grant
	Nonce  []byte `json:"nonce"`
	Sealed []byte `json:"sealed"`
}

type storeFile struct {
	Version int               `json:"version"`
	Grants  map[string]*entry `json:"grants"`
}

// Store is the grant store of one moatc home.
type Store struct{ home string }

// Open returns the store of a moatc home; nothing is read or written yet.
func Open(home string) *Store { return &Store{home: home} }

// Path is the store's file.
func (s *Store) Path() string { return filepath.Join(s.home, "grants.json") }

func (s *Store) keyPath() string { return filepath.Join(s.home, "grants.key") }

// CorruptError says the store or its key cannot be used as moatc wrote them. moatc then adds
// no credential, and changes nothing until the person fixes it.
type CorruptError struct {
	Path string // the file at fault
	msg  string
}

func (e *CorruptError) Error() string { return e.msg }

func (s *Store) corrupt(why string) error {
	return &CorruptError{Path: s.Path(), msg: fmt.Sprintf("the grant store %s %s: remove it (`rm %s`) and %s", s.Path(), why, s.Path(), again)}
}

// Put stores g with its token, replacing a grant of the same name.
func (s *Store) Put(g Grant, token string) error {
	if err := checkName(g.Name); err != nil {
		return fmt.Errorf("storing the grant: %w", err)
	}
	g, err := normalize(g)
	if err != nil {
		return fmt.Errorf("storing grant %s: %w", g.Name, err)
	}
	token, err = cleanToken(token)
	if err != nil {
		return fmt.Errorf("storing grant %s: %w", g.Name, err)
	}
	if g.Created.IsZero() {
		g.Created = time.Now().UTC().Truncate(time.Second)
	}
	return s.update(func(l *loaded) error {
		key := l.key
		if key == nil {
			// The store is empty here: nothing is sealed with a key that could be lost.
			var err error
			if key, _, err = s.key(true); err != nil {
				return err
			}
		}
		e, err := seal(key, g, token)
		if err != nil {
			return fmt.Errorf("storing grant %s: %w", g.Name, err)
		}
		l.sf.Grants[g.Name] = e
		return nil
	})
}

// Remove deletes the grant called name; a *NotFoundError when there is none.
func (s *Store) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	return s.update(func(l *loaded) error {
		if _, ok := l.sf.Grants[name]; !ok {
			return &NotFoundError{Name: name}
		}
		delete(l.sf.Grants, name)
		return nil
	})
}

// List returns the stored grants by name, without their tokens. It opens every token, so a
// store that runs could not use fails here too.
func (s *Store) List() ([]Grant, error) {
	l, err := s.load()
	if err != nil {
		return nil, err
	}
	out := []Grant{}
	for _, name := range l.names() {
		g := l.sf.Grants[name].Grant
		g.Rules = cloneRules(g.Rules)
		out = append(out, g)
	}
	return out, nil
}

// Resolve returns the headers each named grant adds, per host, with the token in them.
func (s *Store) Resolve(names []string) ([]Resolved, error) {
	l, err := s.load()
	if err != nil {
		return nil, err
	}
	var out []Resolved
	setBy := map[string]string{} // host and lower-case header name -> grant
	done := map[string]bool{}
	for _, name := range names {
		if done[name] {
			continue
		}
		done[name] = true
		if err := checkName(name); err != nil {
			return nil, err
		}
		e, ok := l.sf.Grants[name]
		if !ok {
			return nil, &NotFoundError{Name: name, use: true}
		}
		for _, r := range e.Rules {
			res := Resolved{Grant: name, Host: r.Host, Headers: map[string]string{}}
			for _, h := range r.Headers {
				// Two grants for one header leave no right answer, so the run must choose.
				k := r.Host + "\x00" + strings.ToLower(h.Name)
				if other, ok := setBy[k]; ok {
					return nil, fmt.Errorf("grants %s and %s both set %s for %s: give the run only one of them", other, name, h.Name, r.Host)
				}
				setBy[k] = name
				res.Headers[h.Name] = fill(h.Template, l.tokens[name])
			}
			out = append(out, res)
		}
	}
	return out, nil
}

// Check returns nil when the store can be used (an empty or absent one can), and why not
// otherwise, for `moatc doctor`.
func (s *Store) Check() error {
	l, err := s.load()
	if err != nil {
		return err
	}
	if l.key == nil {
		// A bad key would only show at the first grant; say it now.
		if _, _, err := s.key(false); err != nil && !errors.Is(err, errNoKey) {
			return err
		}
	}
	return nil
}

// loaded is the store as read, with every token opened.
type loaded struct {
	sf     *storeFile
	key    []byte // nil when the store holds no grant
	tokens map[string]string
}

func (l *loaded) names() []string {
	names := make([]string, 0, len(l.sf.Grants))
	for n := range l.sf.Grants {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// load reads the store and opens every token. A missing store is empty; anything
// unexpected is an error, never a partial store.
func (s *Store) load() (*loaded, error) {
	sf, err := s.read()
	if err != nil {
		return nil, err
	}
	l := &loaded{sf: sf, tokens: map[string]string{}}
	if len(sf.Grants) == 0 {
		return l, nil
	}
	key, from, err := s.key(false)
	if errors.Is(err, errNoKey) {
		return nil, &CorruptError{Path: s.keyPath(), msg: fmt.Sprintf(
			"the grant store %s holds %d grant%s, but the key that sealed them, %s, is missing: restore that file, or set %s to that key, or remove the store (`rm %s`) and %s",
			s.Path(), len(sf.Grants), map[bool]string{true: "s"}[len(sf.Grants) != 1], s.keyPath(), keyEnv, s.Path(), again)}
	}
	if err != nil {
		return nil, err
	}
	for _, name := range l.names() {
		tok, err := unseal(key, sf.Grants[name])
		if err != nil {
			return nil, &CorruptError{Path: s.Path(), msg: fmt.Sprintf(
				"the grant store %s has grant %s, which the key from %s cannot open (another key sealed it, or the file was edited): restore the key that sealed it, or remove the store (`rm %s`) and %s",
				s.Path(), name, from, s.Path(), again)}
		}
		l.tokens[name] = tok
	}
	l.key = key
	return l, nil
}

// read parses grants.json and checks each entry's shape.
func (s *Store) read() (*storeFile, error) {
	sf := &storeFile{Version: version, Grants: map[string]*entry{}}
	fi, err := os.Lstat(s.Path())
	if errors.Is(err, os.ErrNotExist) {
		return sf, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the grant store: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, s.corrupt("is not a regular file")
	}
	// Writable by others, anyone could point a token at their own host.
	if fi.Mode().Perm()&0o022 != 0 {
		return nil, s.corrupt(fmt.Sprintf("is writable by others (mode %04o), so it may have been changed", fi.Mode().Perm()))
	}
	b, err := os.ReadFile(s.Path())
	if err != nil {
		return nil, fmt.Errorf("reading the grant store: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(sf); err != nil {
		return nil, s.corrupt(fmt.Sprintf("cannot be read (%v)", err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, s.corrupt("has data after its end")
	}
	if sf.Version != version {
		return nil, s.corrupt(fmt.Sprintf("has version %d, not %d", sf.Version, version))
	}
	if sf.Grants == nil {
		sf.Grants = map[string]*entry{}
	}
	for name, e := range sf.Grants {
		if e == nil || e.Name != name || checkName(name) != nil {
			return nil, s.corrupt(fmt.Sprintf("has a malformed entry %q", printable(name)))
		}
		if _, err := normalize(e.Grant); err != nil {
			return nil, s.corrupt(fmt.Sprintf("has a malformed entry %q (%v)", printable(name), err))
		}
		if len(e.Nonce) != nonceLen || len(e.Sealed) <= 16 {
			return nil, s.corrupt(fmt.Sprintf("has a malformed sealed token in entry %s", name))
		}
	}
	return sf, nil
}

// update changes the store under its lock and writes it atomically; on any error it writes nothing.
func (s *Store) update(fn func(*loaded) error) error {
	if err := os.MkdirAll(s.home, 0o700); err != nil {
		return fmt.Errorf("writing the grant store: %w", err)
	}
	unlock, err := state.Lock(filepath.Join(s.home, "grants.lock"))
	if err != nil {
		return err
	}
	defer unlock()
	l, err := s.load()
	if err != nil {
		return err
	}
	if err := fn(l); err != nil {
		return err
	}
	b, err := json.MarshalIndent(l.sf, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFile(s.Path(), append(b, '\n'), false); err != nil {
		return fmt.Errorf("writing the grant store: %w", err)
	}
	return nil
}

var errNoKey = errors.New("no grant key")

// key returns the store's key and where it came from: MOATC_GRANT_KEY, else grants.key,
// made when create is set and it does not exist (errNoKey when it is not set).
func (s *Store) key(create bool) ([]byte, string, error) {
	if v := os.Getenv(keyEnv); v != "" {
		if k, ok := parseKey(strings.TrimSpace(v)); ok {
			return k, keyEnv, nil
		}
		return nil, "", fmt.Errorf("%s is set but is not a grant key: give 64 hex digits or the standard base64 of 32 bytes (`openssl rand -hex 32` makes one), or unset it to use %s", keyEnv, s.keyPath())
	}
	path := s.keyPath()
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		if !create {
			return nil, "", errNoKey
		}
		return s.makeKey()
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading the grant key: %w", err)
	}
	bad := func(why string) ([]byte, string, error) {
		return nil, "", &CorruptError{Path: path, msg: fmt.Sprintf("the grant key %s %s", path, why)}
	}
	if !fi.Mode().IsRegular() {
		return bad(fmt.Sprintf("is not a regular file: restore the key file, or remove it and the store (`rm %s %s`) and %s", path, s.Path(), again))
	}
	if fi.Mode().Perm()&^0o600 != 0 {
		return bad(fmt.Sprintf("has mode %04o, which lets others read or change it: `chmod 600 %s`; if others could read it, revoke the tokens at their providers and %s", fi.Mode().Perm(), path, again))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, "", fmt.Errorf("reading the grant key: %w", err)
	}
	k, err := hex.DecodeString(strings.TrimSuffix(string(b), "\n"))
	if err != nil || len(k) != keySize {
		return bad(fmt.Sprintf("is not 64 hex digits: restore it from your copy, or remove it and the store (`rm %s %s`) and %s", path, s.Path(), again))
	}
	return k, path, nil
}

func (s *Store) makeKey() ([]byte, string, error) {
	k := make([]byte, keySize)
	if _, err := rand.Read(k); err != nil {
		return nil, "", fmt.Errorf("making the grant key: %w", err)
	}
	// noReplace: a key that sealed something must never be overwritten.
	if err := writeFile(s.keyPath(), []byte(hex.EncodeToString(k)+"\n"), true); err != nil {
		return nil, "", fmt.Errorf("making the grant key: %w", err)
	}
	return k, s.keyPath(), nil
}

func parseKey(v string) ([]byte, bool) {
	if len(v) == 2*keySize {
		if k, err := hex.DecodeString(v); err == nil {
			return k, true
		}
	}
	if k, err := base64.StdEncoding.DecodeString(v); err == nil && len(k) == keySize {
		return k, true
	}
	return nil, false
}

func aead(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func seal(key []byte, g Grant, token string) (*entry, error) {
	a, err := aead(key)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, nonceLen)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return &entry{Grant: g, Nonce: nonce, Sealed: a.Seal(nil, nonce, []byte(token), aad(g))}, nil
}

func unseal(key []byte, e *entry) (string, error) {
	a, err := aead(key)
	if err != nil {
		return "", err
	}
	b, err := a.Open(nil, e.Nonce, e.Sealed, aad(e.Grant))
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// writeFile writes data to path atomically and durably: temp file in the same directory,
// fsync, rename (or link, which fails rather than replace an existing file), fsync of the directory.
func writeFile(path string, data []byte, noReplace bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && noReplace {
		err = os.Link(tmp, path)
		os.Remove(tmp)
	} else if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
