package deps

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
)

// Plan is a resolved dependency list: what the image gets, deduplicated and in a fixed order.
// The same list (in any order, spelled either way) yields the same Plan.
type Plan struct {
	Items []Item
	// Docker is "host" or "dind" when the list has docker:host or docker:dind: what the run
	// must provide (moatc's Docker API socket mounted, or a privileged container), else "".
	Docker string
	// Scope keys the build's cache mounts (and so the image tag): moatc sets it per workspace,
	// so a build reads only caches its own workspace's builds wrote.
	Scope string

	pipIndex string
}

// Item is one thing the image gets.
type Item struct {
	Key     string  // identity: "node", "jq", "apt:jq", "npm:typescript", "go:golang.org/x/...", "pip:requests"
	Kind    Kind    //
	Version string  // exact version (runtime, binary, docker mode), the npm/go/pip spec ("latest"), "" for apt and python's Debian build
	Entries []Entry // the list entries that asked for it (a bundle's entry for its members)

	info     *Info
	ver      *Version
	pkg      string // npm package, go package path, PyPI project, Debian package (prefixed apt:)
	explicit *Entry // the entry that set the version, if one did
}

// Name is how the item is shown: its registry name, or its prefixed form.
func (it Item) Name() string {
	if it.info != nil {
		return it.info.Name
	}
	return it.Key
}

// Source says where the item's bits come from.
func (it Item) Source() string {
	switch {
	case it.info != nil:
		return it.info.Source
	case it.Kind == KindNPM:
		return "npm registry"
	case it.Kind == KindGo:
		return "Go module proxy"
	case it.Kind == KindPip:
		return "Python package index"
	case it.Kind == KindApt:
		return "Debian bookworm"
	}
	return ""
}

// Option changes how Resolve works.
type Option func(*resolveOpts)

type resolveOpts struct{ pipIndex string }

// WithPipIndex lets pip: entries resolve, installing from the given package index (PyPI's
// https://pypi.org/simple or a mirror). Without it pip: entries are an error, because moatc's
// builds here reach only Debian's archive, the npm registry and the Go module proxy: an image
// whose pip install cannot reach its index would only fail later, at build time.
func WithPipIndex(indexURL string) Option { return func(o *resolveOpts) { o.pipIndex = indexURL } }

// Resolve resolves deps (from Parse) against the default registry.
func Resolve(deps []Dep, opts ...Option) (*Plan, error) { return Default().Resolve(deps, opts...) }

// Resolve expands bundles, merges repeated entries, picks default versions and checks that
// the entries fit together: one version per runtime or package, npm packages with node, Go
// tools with go, pip packages with python and a reachable index. It reports every problem:
// the error is the *Errors joined (see Errors).
func (r *Registry) Resolve(deps []Dep, opts ...Option) (*Plan, error) {
	var o resolveOpts
	for _, f := range opts {
		f(&o)
	}
	if o.pipIndex != "" {
		if u, err := url.Parse(o.pipIndex); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.ContainsAny(o.pipIndex, "'\"\\ \t\n\r`$") {
			return nil, fmt.Errorf("pip index %q is not an http or https URL", o.pipIndex)
		}
	}
	m := &merger{r: r, items: map[string]*Item{}}
	for _, d := range deps {
		m.add(d, nil)
	}
	p := &Plan{pipIndex: o.pipIndex}
	for _, key := range m.order {
		it := m.items[key]
		m.complete(it, o.pipIndex)
		if it.Kind == KindDocker && it.ver != nil {
			p.Docker = it.ver.Version
		}
		p.Items = append(p.Items, *it)
	}
	// Requirements: checked after merging, so the order of the list does not matter.
	for _, it := range p.Items {
		m.checkRequirements(it)
	}
	if len(m.errs) > 0 {
		return nil, errors.Join(m.errs...)
	}
	sort.SliceStable(p.Items, func(a, b int) bool {
		la, lb := layer(p.Items[a]), layer(p.Items[b])
		if la != lb {
			return la < lb
		}
		return p.Items[a].Key < p.Items[b].Key
	})
	return p, nil
}

// merger merges a list's dependencies into items, one per package, collecting every problem.
type merger struct {
	r     *Registry
	items map[string]*Item
	order []string // keys in the order of first mention
	errs  []error
}

// add merges d, or the members of a bundle d, into the items; via is the bundle's entry.
func (m *merger) add(d Dep, via *Entry) {
	entry := d.Entry
	if via != nil {
		entry = *via
	}
	if d.Kind == KindMeta {
		for _, name := range d.info.Bundle {
			mi, ok := m.r.entries[name]
			if !ok { // parsed with another registry
				m.errs = append(m.errs, newError(ErrUnknown, []Entry{entry}, "bundle %s: unknown member %q", d.Name, name))
				continue
			}
			m.add(Dep{Entry: d.Entry, Kind: mi.Kind, Name: name, info: mi}, &entry)
		}
		return
	}
	key, pkg := itemKey(d)
	it, ok := m.items[key]
	if !ok {
		it = &Item{Key: key, Kind: d.Kind, info: d.info, pkg: pkg}
		m.items[key] = it
		m.order = append(m.order, key)
	}
	if it.info == nil && d.info != nil {
		it.info = d.info // `typescript` and `npm:typescript` are one item; keep the entry's data
	}
	if !slices.Contains(it.Entries, entry) {
		it.Entries = append(it.Entries, entry)
	}
	if d.Version == "" {
		return
	}
	version := d.Version
	if d.ver != nil {
		version = d.ver.Version
	}
	switch {
	case it.explicit == nil:
		it.explicit, it.Version, it.ver = &entry, version, d.ver
	case it.Version != version:
		m.errs = append(m.errs, conflict(it, entry, version))
	}
}

// complete picks the default version of an item the list gave none, and refuses pip packages
// without an index.
func (m *merger) complete(it *Item, pipIndex string) {
	if it.explicit == nil {
		switch {
		case it.info != nil && it.info.Versioned() && it.info.Default != "":
			v, _ := it.info.FindVersion(it.info.Default)
			it.Version, it.ver = v.Version, &v
		case it.Kind == KindNPM || it.Kind == KindGo:
			it.Version = "latest"
			if it.info != nil && it.info.Default != "" {
				it.Version = it.info.Default
			}
		}
	}
	if it.Kind == KindPip && pipIndex == "" {
		m.errs = append(m.errs, newError(ErrUnsupported, it.Entries[:1],
			"%s: pip packages come from PyPI, which moatc's builds cannot reach here (they reach only Debian's archive, the npm registry and the Go module proxy), so this image could not be built. Use Debian's package instead, which most PyPI projects have as python3-NAME: apt:python3-%s (and python); or, where PyPI or a mirror is reachable, configure it as moatc's pip index",
			it.Entries[0].Text, debianPythonName(it.pkg)))
	}
}

// checkRequirements reports what it needs that the list does not have.
func (m *merger) checkRequirements(it Item) {
	for _, need := range requirements(it) {
		if _, ok := m.items[need]; ok {
			continue
		}
		hint := fmt.Sprintf("add %q to the list", need)
		if ni, ok := m.r.entries[need]; ok && ni.Versioned() {
			hint = fmt.Sprintf("add %q (or one of %s) to the list", need, strings.Join(prefixed(need+"@", ni.VersionNames()), ", "))
		}
		m.errs = append(m.errs, newError(ErrRequires, it.Entries[:1], "%s needs %s, which is not in the list: %s", it.Entries[0].Text, need, hint))
	}
}

func conflict(it *Item, entry Entry, version string) *Error {
	return newError(ErrConflict, []Entry{entry, *it.explicit},
		"%s conflicts with %s: an image has one %s (asked for %s and %s); keep one of them",
		where(entry), where(*it.explicit), describeOne(it), version, it.Version)
}

func describeOne(it *Item) string {
	switch it.Kind {
	case KindRuntime:
		return it.Name() + " version"
	case KindDocker:
		return "docker mode"
	case KindNPM:
		return "version of the npm package " + it.pkg
	case KindGo:
		return "version of the Go tool " + it.pkg
	case KindPip:
		return "version of the PyPI package " + it.pkg
	}
	return it.Name() + " version"
}

// itemKey is an item's identity: the same package reached two ways is one item.
func itemKey(d Dep) (key, pkg string) {
	switch d.Kind {
	case KindNPM:
		pkg = d.Name
		if d.info != nil {
			pkg = d.info.NPM
		}
		return "npm:" + pkg, pkg
	case KindGo:
		pkg = d.Name
		if d.info != nil {
			pkg = d.info.Go
		}
		return "go:" + pkg, pkg
	case KindPip:
		pkg = strings.ToLower(strings.NewReplacer("_", "-", ".", "-").Replace(d.Name))
		return "pip:" + pkg, pkg
	case KindApt:
		if d.info == nil {
			return "apt:" + d.Name, d.Name
		}
	}
	return d.Name, ""
}

// requirements lists the item keys an item needs.
func requirements(it Item) []string {
	var out []string
	if it.info != nil {
		out = append(out, it.info.Requires...)
	}
	need := map[Kind]string{KindNPM: "node", KindGo: "go", KindPip: "python"}[it.Kind]
	if need != "" && !slices.Contains(out, need) {
		out = append(out, need)
	}
	return out
}

// layer orders the Dockerfile from what changes least to what changes most.
func layer(it Item) int {
	switch it.Kind {
	case KindRuntime, KindDocker:
		return 0
	case KindApt:
		return 1
	case KindBinary:
		return 2
	case KindNPM:
		return 3
	case KindGo:
		return 4
	case KindPip:
		return 5
	}
	return 6
}

func prefixed(p string, ss []string) []string {
	out := make([]string, len(ss))
	for k, s := range ss {
		out[k] = p + s
	}
	return out
}

// debianPythonName is Debian's usual name for a PyPI project's package, without python3-.
func debianPythonName(pkg string) string {
	return strings.TrimPrefix(strings.ToLower(pkg), "python-")
}
