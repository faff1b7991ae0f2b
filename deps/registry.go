// Package deps turns the `dependencies:` list of a moatc.yaml into an image recipe. Parse reads
// the entries (registry names such as `node@22`, and `npm:`, `pip:`, `go:`, `apt:`, `docker:`
// forms), Resolve checks them against the registry compiled into moatc (registry.yaml) and
// against each other, and the resulting Plan writes a deterministic Dockerfile whose hash is
// the image tag. Nothing here touches the network or the disk.
package deps

import (
	_ "embed"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"gopkg.in/yaml.v3"
)

//go:embed registry.yaml
var registryYAML []byte

// Kind says how a dependency is installed.
type Kind string

const (
	KindRuntime Kind = "runtime" // a language runtime (node, go, python): one version per image
	KindApt     Kind = "apt"     // Debian packages
	KindNPM     Kind = "npm"     // a global npm package; needs node
	KindGo      Kind = "go"      // a tool built with `go install`; needs go
	KindBinary  Kind = "binary"  // a downloaded program, pinned by sha256
	KindMeta    Kind = "meta"    // a bundle of other entries
	KindDocker  Kind = "docker"  // the Docker CLI, with a mode (docker:host or docker:dind)
	KindPip     Kind = "pip"     // a PyPI package (pip:NAME only; no registry entry has it)
)

// Info is one registry entry, as `moatc deps info NAME` shows it.
type Info struct {
	Name        string             `yaml:"-"`
	Kind        Kind               `yaml:"kind"`
	Description string             `yaml:"description"`
	Source      string             `yaml:"source"`   // where the bits come from, in words
	Apt         []string           `yaml:"apt"`      // Debian packages (apt, runtime, docker)
	NPM         string             `yaml:"npm"`      // npm package (npm)
	Go          string             `yaml:"go"`       // package path for `go install` (go)
	Bundle      []string           `yaml:"bundle"`   // entries a meta entry stands for
	Requires    []string           `yaml:"requires"` // entries that must also be listed
	Default     string             `yaml:"default"`  // version used when none is written
	Versions    []Version          `yaml:"-"`        // sorted oldest first; empty: unversioned
	RawVersions map[string]Version `yaml:"versions"` // as in the file; Versions is the sorted view
	Links       map[string]string  `yaml:"links"`    // symlinks made after install: LINK -> TARGET
	Path        []string           `yaml:"path"`     // directories put first on PATH
	Aliases     []string           `yaml:"aliases"`  // other names, for "did you mean"
}

// Version is one installable version of a runtime, binary or docker entry.
type Version struct {
	Name    string `yaml:"-"`       // what users write: "22", "1.27", "host"
	Version string `yaml:"version"` // the exact version installed: "22.23.3"
	Files   []File `yaml:"files"`   // downloads
}

// File is a download, pinned by its sha256, and what to take out of it.
type File struct {
	URL    string            `yaml:"url"`
	SHA256 string            `yaml:"sha256"`
	Format string            `yaml:"format"` // tar.gz, tar.xz, zip, or file (the download is the program)
	Place  map[string]string `yaml:"place"`  // path in the archive (format file: "download") -> path in the image
	Links  map[string]string `yaml:"links"`  // LINK -> TARGET, made after placing
}

// Versioned reports whether the entry has a fixed list of versions (runtime, binary, docker).
func (i Info) Versioned() bool { return len(i.Versions) > 0 }

// FreeVersion reports whether any version spec of the right syntax is accepted and passed to
// the package manager (npm and go entries; the default is "latest").
func (i Info) FreeVersion() bool { return i.Kind == KindNPM || i.Kind == KindGo }

// VersionNames lists the names users can write after '@', oldest first.
func (i Info) VersionNames() []string {
	var out []string
	for _, v := range i.Versions {
		out = append(out, v.Name)
	}
	return out
}

// FindVersion returns the version a user's text selects: a version name ("22"), the exact
// version ("22.23.3") or a prefix of it on a dot boundary ("22.23").
func (i Info) FindVersion(text string) (Version, bool) {
	for _, v := range i.Versions {
		if text == v.Name || text == v.Version || strings.HasPrefix(v.Version, text+".") {
			return v, true
		}
	}
	return Version{}, false
}

// Registry is a set of known dependencies.
type Registry struct {
	entries map[string]*Info
}

var defaultRegistry = sync.OnceValues(func() (*Registry, error) { return NewRegistry(registryYAML) })

// Default is the registry compiled into moatc.
func Default() *Registry {
	r, err := defaultRegistry()
	if err != nil {
		// The embedded file is checked by the package's tests; this cannot happen in a build
		// that passed them.
		panic("deps: embedded registry.yaml is invalid: " + err.Error())
	}
	return r
}

// List returns the default registry's entries sorted by name.
func List() []Info { return Default().List() }

// Lookup returns the default registry's entry for a name.
func Lookup(name string) (Info, error) { return Default().Lookup(name) }

// NewRegistry reads a registry in registry.yaml's format and checks every entry.
func NewRegistry(data []byte) (*Registry, error) {
	r := &Registry{entries: map[string]*Info{}}
	return r.add(data)
}

// Extend returns a registry with the entries of data added to r's; an entry of the same name
// replaces r's. r itself is not changed.
func (r *Registry) Extend(data []byte) (*Registry, error) {
	n := &Registry{entries: make(map[string]*Info, len(r.entries))}
	for k, v := range r.entries {
		n.entries[k] = v
	}
	return n.add(data)
}

func (r *Registry) add(data []byte) (*Registry, error) {
	var raw map[string]*Info
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("dependency registry: %w", err)
	}
	for name, info := range raw {
		if info == nil {
			return nil, fmt.Errorf("dependency registry: %s: empty entry", name)
		}
		info.Name = name
		for vn, v := range info.RawVersions {
			v.Name = vn
			info.Versions = append(info.Versions, v)
		}
		sort.Slice(info.Versions, func(a, b int) bool {
			return compareVersions(info.Versions[a].Name, info.Versions[b].Name) < 0
		})
		if info.Source == "" {
			info.Source = defaultSource(info)
		}
		r.entries[name] = info
	}
	var errs []string
	for _, name := range r.names() {
		if err := r.check(r.entries[name]); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", name, err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("dependency registry: %s", strings.Join(errs, "; "))
	}
	return r, nil
}

func defaultSource(i *Info) string {
	switch i.Kind {
	case KindApt:
		return "Debian bookworm (apt: " + strings.Join(i.Apt, " ") + ")"
	case KindNPM:
		return "npm registry (npm install --global " + i.NPM + ")"
	case KindGo:
		return "Go module proxy (go install " + i.Go + ")"
	case KindMeta:
		return "bundle of " + strings.Join(i.Bundle, ", ")
	}
	for _, v := range i.Versions {
		for _, f := range v.Files {
			if u, err := url.Parse(f.URL); err == nil && u.Host != "" {
				return "download from " + u.Host
			}
		}
	}
	return ""
}

func (r *Registry) names() []string {
	var out []string
	for n := range r.entries {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// List returns the entries sorted by name.
func (r *Registry) List() []Info {
	var out []Info
	for _, n := range r.names() {
		out = append(out, *r.entries[n])
	}
	return out
}

// Lookup returns the entry for a name; an unknown name yields an *Error with suggestions.
func (r *Registry) Lookup(name string) (Info, error) {
	if i, ok := r.entries[name]; ok {
		return *i, nil
	}
	return Info{}, r.unknown(Entry{Text: name}, name)
}

var (
	reName    = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	reAptName = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	reNPMName = regexp.MustCompile(`^(@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$`)
	reGoPath  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._~-]*(/[A-Za-z0-9._~+-]+)*$`)
	rePipName = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$`)
	reSHA256  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// Paths written into the Dockerfile. They are shell-quoted as well; the charset keeps them
	// readable and free of anything a quote could miss.
	rePath    = regexp.MustCompile(`^[A-Za-z0-9@._+/-]+$`)
	reVersion = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z.+_-]*$`)
)

var kinds = map[Kind]bool{KindRuntime: true, KindApt: true, KindNPM: true, KindGo: true, KindBinary: true, KindMeta: true, KindDocker: true}

// check validates one entry against the rest of the registry.
func (r *Registry) check(i *Info) error {
	if !reName.MatchString(i.Name) {
		return fmt.Errorf("bad name (want lower-case letters, digits, '.', '_', '-')")
	}
	if !kinds[i.Kind] {
		return fmt.Errorf("unknown kind %q", i.Kind)
	}
	if i.Description == "" {
		return fmt.Errorf("no description")
	}
	for _, p := range i.Apt {
		if !reAptName.MatchString(p) {
			return fmt.Errorf("bad Debian package name %q", p)
		}
	}
	if err := checkKind(i); err != nil {
		return err
	}
	if i.Kind != KindMeta && len(i.Bundle) > 0 {
		return fmt.Errorf("only meta entries have a bundle")
	}
	if err := checkVersions(i); err != nil {
		return err
	}
	if err := r.checkRefs(i); err != nil {
		return err
	}
	if err := checkLinks(i.Links); err != nil {
		return err
	}
	for _, p := range i.Path {
		if !strings.HasPrefix(p, "/") || !rePath.MatchString(p) {
			return fmt.Errorf("bad path entry %q", p)
		}
	}
	return nil
}

// checkKind checks that i has what its kind needs.
func checkKind(i *Info) error {
	need := func(cond bool, what string) error {
		if !cond {
			return fmt.Errorf("kind %s needs %s", i.Kind, what)
		}
		return nil
	}
	switch i.Kind {
	case KindApt:
		return need(len(i.Apt) > 0, "apt packages")
	case KindNPM:
		return need(reNPMName.MatchString(i.NPM), "an npm package name (npm:)")
	case KindGo:
		return need(reGoPath.MatchString(i.Go) && strings.Contains(strings.Split(i.Go, "/")[0], "."), "a go install package path (go:)")
	case KindMeta:
		return need(len(i.Bundle) > 0, "bundle members")
	case KindRuntime, KindBinary, KindDocker:
		return need(len(i.Versions) > 0, "versions")
	}
	return nil
}

// checkVersions checks i's version list and default version.
func checkVersions(i *Info) error {
	if len(i.Versions) > 0 {
		if i.Kind != KindRuntime && i.Kind != KindBinary && i.Kind != KindDocker {
			return fmt.Errorf("kind %s takes no version list", i.Kind)
		}
		if i.Kind != KindDocker {
			if _, ok := i.FindVersion(i.Default); !ok || i.Default == "" {
				return fmt.Errorf("default %q is not one of its versions %v", i.Default, i.VersionNames())
			}
		}
		for _, v := range i.Versions {
			if !reVersion.MatchString(v.Name) || !reVersion.MatchString(v.Version) {
				return fmt.Errorf("bad version %q: %q", v.Name, v.Version)
			}
			if i.Kind == KindBinary && len(v.Files) == 0 {
				return fmt.Errorf("version %s has no files", v.Name)
			}
			for _, f := range v.Files {
				if err := checkFile(f); err != nil {
					return fmt.Errorf("version %s: %v", v.Name, err)
				}
			}
		}
	} else if i.Default != "" && !i.FreeVersion() {
		return fmt.Errorf("a default version needs a version list")
	}
	if i.Default != "" && i.FreeVersion() && !validFreeVersion(i.Kind, i.Default) {
		return fmt.Errorf("bad default version %q", i.Default)
	}
	return nil
}

// checkRefs checks that the entries i's bundle and requirements name are in the registry.
func (r *Registry) checkRefs(i *Info) error {
	for _, m := range i.Bundle {
		if _, ok := r.entries[m]; !ok {
			return fmt.Errorf("bundle member %q is not in the registry", m)
		}
		if r.bundleCycle(m, map[string]bool{i.Name: true}) {
			return fmt.Errorf("bundle member %q includes %s again", m, i.Name)
		}
	}
	for _, q := range i.Requires {
		if q2, ok := r.entries[q]; !ok || q2.Kind == KindMeta {
			return fmt.Errorf("requires %q, which is not a registry entry (or is a bundle)", q)
		}
	}
	return nil
}

func (r *Registry) bundleCycle(name string, seen map[string]bool) bool {
	if seen[name] {
		return true
	}
	seen[name] = true
	defer delete(seen, name)
	for _, m := range r.entries[name].Bundle {
		if _, ok := r.entries[m]; ok && r.bundleCycle(m, seen) {
			return true
		}
	}
	return false
}

var formats = map[string]bool{"tar.gz": true, "tar.xz": true, "zip": true, "file": true}

func checkFile(f File) error {
	u, err := url.Parse(f.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.ContainsAny(f.URL, "'\"\\ \t\n\r`$") {
		return fmt.Errorf("bad url %q (want an http or https URL without quotes or spaces)", f.URL)
	}
	if !reSHA256.MatchString(f.SHA256) {
		return fmt.Errorf("%s: sha256 must be 64 lower-case hex digits", f.URL)
	}
	if !formats[f.Format] {
		return fmt.Errorf("%s: format %q (want tar.gz, tar.xz, zip or file)", f.URL, f.Format)
	}
	if len(f.Place) == 0 {
		return fmt.Errorf("%s: nothing to place", f.URL)
	}
	for src, dst := range f.Place {
		if f.Format == "file" && src != "download" {
			return fmt.Errorf("%s: format file places only \"download\", not %q", f.URL, src)
		}
		if !rePath.MatchString(src) || strings.HasPrefix(src, "/") || slices.Contains(strings.Split(src, "/"), "..") {
			return fmt.Errorf("%s: bad archive path %q", f.URL, src)
		}
		if !strings.HasPrefix(dst, "/") || !rePath.MatchString(dst) || slices.Contains(strings.Split(dst, "/"), "..") {
			return fmt.Errorf("%s: bad destination %q (want an absolute path)", f.URL, dst)
		}
	}
	return checkLinks(f.Links)
}

func checkLinks(links map[string]string) error {
	for l, t := range links {
		if !strings.HasPrefix(l, "/") || !rePath.MatchString(l) || !rePath.MatchString(t) {
			return fmt.Errorf("bad link %q -> %q", l, t)
		}
	}
	return nil
}

// compareVersions orders "20" < "22" < "100" and "1.9" < "1.26": numeric parts compare as
// numbers, others as text.
func compareVersions(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for k := 0; k < len(pa) && k < len(pb); k++ {
		na, ea := strconv.Atoi(pa[k])
		nb, eb := strconv.Atoi(pb[k])
		switch {
		case ea == nil && eb == nil && na != nb:
			if na < nb {
				return -1
			}
			return 1
		case (ea != nil || eb != nil) && pa[k] != pb[k]:
			return strings.Compare(pa[k], pb[k])
		}
	}
	return len(pa) - len(pb)
}
