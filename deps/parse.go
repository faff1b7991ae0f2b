package deps

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/moatc/moatc/internal/suggest"
)

// Dep is one parsed entry.
type Dep struct {
	Entry   Entry
	Kind    Kind
	Prefix  string // "npm", "pip", "go", "apt" or "docker" for the prefixed forms; "" for registry names
	Name    string // the registry name; for npm:/pip:/go:/apt: the package, module path or Debian package
	Version string // as written after '@' ("" for the default); docker's mode (host, dind)

	info *Info    // the registry entry; nil for npm:/pip:/go:/apt:
	ver  *Version // the version selected, for entries with a version list
}

// String is the entry in canonical form, e.g. "node@22" or "npm:typescript@5.9.2".
func (d Dep) String() string {
	s := d.Name
	if d.Prefix == "docker" {
		return "docker:" + d.Version
	}
	if d.Prefix != "" {
		s = d.Prefix + ":" + s
	}
	if d.Version != "" {
		s += "@" + d.Version
	}
	return s
}

// Info returns the registry entry the dependency names, if any.
func (d Dep) Info() (Info, bool) {
	if d.info == nil {
		return Info{}, false
	}
	return *d.info, true
}

// Parse parses entries against the default registry.
func Parse(entries []Entry) ([]Dep, error) { return Default().Parse(entries) }

// Parse parses every entry and checks names and versions against the registry. It reports
// every bad entry, not just the first: the error is the *Errors joined (see Errors).
func (r *Registry) Parse(entries []Entry) ([]Dep, error) {
	var deps []Dep
	var errs []error
	for _, e := range entries {
		d, err := r.parseOne(e)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		deps = append(deps, d)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return deps, nil
}

var prefixes = []string{"apt", "docker", "go", "npm", "pip"}

const dockerModes = `docker:dind gives the run a Docker API socket of its own, served by moatc on containerd (its containers, images, networks and volumes are the run's alone and go with it); docker:host gives a socket onto one engine namespace shared by docker:host runs, whose images outlive the run (a policy key: it needs moatc trust)`

func (r *Registry) parseOne(e Entry) (Dep, error) {
	text := strings.TrimSpace(e.Text)
	bad := func(code Code, format string, a ...any) (Dep, error) {
		return Dep{}, newError(code, []Entry{e}, format, a...)
	}
	if text == "" {
		return bad(ErrSyntax, "empty dependency")
	}
	if strings.ContainsAny(text, " \t\r\n") {
		return bad(ErrSyntax, "dependency %q contains white space; write one dependency per list item", text)
	}
	if prefix, rest, ok := strings.Cut(text, ":"); ok {
		return r.parsePrefixed(e, text, prefix, rest)
	}
	name, ver, hasVer := splitVersion(text)
	if strings.Count(text, "@") > 1 {
		return bad(ErrSyntax, "%q has more than one '@'; write NAME or NAME@VERSION", text)
	}
	if name == "docker" && hasVer {
		return bad(ErrSyntax, "write docker:host or docker:dind, not %q. %s", text, dockerModes)
	}
	if name == "docker" {
		return bad(ErrUnsupported, "plain \"docker\" is ambiguous; write docker:host or docker:dind. %s", dockerModes)
	}
	if !reName.MatchString(name) {
		return bad(ErrSyntax, "%q is not a dependency name (names are lower-case letters, digits, '.', '_' and '-'; prefixed forms are apt:, docker:, go:, npm:, pip:)", text)
	}
	info, ok := r.entries[name]
	if !ok {
		return Dep{}, r.unknown(e, name)
	}
	d := Dep{Entry: e, Kind: info.Kind, Name: name, info: info}
	if !hasVer {
		return d, nil
	}
	if ver == "" {
		return bad(ErrSyntax, "%q: nothing after '@'; write %s or %s@VERSION", text, name, name)
	}
	switch {
	case info.Versioned():
		if !reNumeric.MatchString(ver) {
			return bad(ErrSyntax, "%q: bad version %q; versions of %s look like %s (available: %s)", text, ver, name, info.Versions[len(info.Versions)-1].Name, availableVersions(info))
		}
		v, ok := info.FindVersion(ver)
		if !ok {
			return bad(ErrVersion, "%s has no version %s; available: %s", name, ver, availableVersions(info))
		}
		d.Version, d.ver = ver, &v
	case info.FreeVersion():
		if !validFreeVersion(info.Kind, ver) {
			return bad(ErrSyntax, "%q: bad version %q for %s", text, ver, freeVersionHint(info.Kind))
		}
		d.Version = ver
	case info.Kind == KindMeta:
		return bad(ErrVersion, "%s is a bundle (%s) and takes no version; list a member with a version instead, e.g. %s@VERSION", name, strings.Join(info.Bundle, ", "), info.Bundle[0])
	default:
		return bad(ErrVersion, "%s comes from Debian bookworm, which has one version of each package; remove \"@%s\"", name, ver)
	}
	return d, nil
}

func (r *Registry) parsePrefixed(e Entry, text, prefix, rest string) (Dep, error) {
	bad := func(code Code, format string, a ...any) (Dep, error) {
		return Dep{}, newError(code, []Entry{e}, format, a...)
	}
	d := Dep{Entry: e, Prefix: prefix}
	switch prefix {
	case "docker":
		info, ok := r.entries["docker"]
		if !ok {
			return Dep{}, r.unknown(e, "docker")
		}
		v, ok := info.FindVersion(rest)
		if !ok || rest == "" {
			return bad(ErrSyntax, "%q: the docker mode must be host or dind. %s", text, dockerModes)
		}
		d.Kind, d.Name, d.Version, d.info, d.ver = KindDocker, "docker", rest, info, &v
		return d, nil
	case "npm", "go", "pip", "apt":
	default:
		return bad(ErrSyntax, "%q: unknown prefix %q (known: %s)", text, prefix+":", strings.Join(prefixes, ":, ")+":")
	}
	name, ver, hasVer := splitVersion(rest)
	if hasVer && ver == "" {
		return bad(ErrSyntax, "%q: nothing after '@'", text)
	}
	switch prefix {
	case "npm":
		d.Kind = KindNPM
		if !reNPMName.MatchString(name) {
			return bad(ErrSyntax, "%q: %q is not an npm package name (lower-case, optionally @scope/name)", text, name)
		}
	case "go":
		d.Kind = KindGo
		if !reGoPath.MatchString(name) || !strings.Contains(strings.Split(name, "/")[0], ".") || strings.Contains(name, "..") {
			return bad(ErrSyntax, "%q: %q is not a Go package path (e.g. go:golang.org/x/tools/cmd/stringer@latest)", text, name)
		}
	case "pip":
		d.Kind = KindPip
		if !rePipName.MatchString(name) {
			return bad(ErrSyntax, "%q: %q is not a PyPI project name", text, name)
		}
	case "apt":
		d.Kind = KindApt
		if !reAptName.MatchString(name) {
			return bad(ErrSyntax, "%q: %q is not a Debian package name", text, name)
		}
		if hasVer {
			return bad(ErrVersion, "%q: Debian's archive has one version of each package per release; remove \"@%s\"", text, ver)
		}
	}
	if hasVer && !validFreeVersion(d.Kind, ver) {
		return bad(ErrSyntax, "%q: bad version %q for %s", text, ver, freeVersionHint(d.Kind))
	}
	d.Name, d.Version = name, ver
	return d, nil
}

// splitVersion splits NAME@VERSION at the last '@' that is not the first character (npm scopes
// start with '@').
func splitVersion(s string) (name, version string, ok bool) {
	i := strings.LastIndex(s, "@")
	if i <= 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

var (
	reNumeric    = regexp.MustCompile(`^[0-9]+(\.[0-9]+)*$`)
	reNPMVersion = regexp.MustCompile(`^[~^]?[0-9A-Za-z][0-9A-Za-z.+_-]*$`)
	reGoVersion  = regexp.MustCompile(`^(v[0-9]+(\.[0-9]+){0,2}([-+][0-9A-Za-z.+-]+)?|[A-Za-z0-9][A-Za-z0-9._-]*)$`) // a version, or a query: latest, a branch, a commit
	rePipVersion = regexp.MustCompile(`^[0-9][0-9A-Za-z.+!_-]*$`)
)

func validFreeVersion(k Kind, v string) bool {
	switch k {
	case KindNPM:
		return reNPMVersion.MatchString(v)
	case KindGo:
		return reGoVersion.MatchString(v) && !reNumeric.MatchString(v) // Go versions start with v
	case KindPip:
		return rePipVersion.MatchString(v)
	}
	return false
}

func freeVersionHint(k Kind) string {
	switch k {
	case KindNPM:
		return "an npm package (an exact version such as 5.9.2, a range such as ^5.9 or ~5.9.2, or a tag such as latest)"
	case KindGo:
		return "a Go module (latest, a semantic version such as v0.31.0, a branch or a commit hash)"
	case KindPip:
		return "a PyPI package (an exact version such as 2.32.3)"
	}
	return string(k)
}

func availableVersions(i *Info) string {
	var out []string
	for _, v := range i.Versions {
		s := v.Name
		if v.Version != v.Name {
			s += " (" + v.Version + ")"
		}
		if v.Name == i.Default {
			s += " [default]"
		}
		out = append(out, s)
	}
	return strings.Join(out, ", ")
}

// unknown builds the error for a name the registry does not have, with "did you mean".
func (r *Registry) unknown(e Entry, name string) *Error {
	sugg := r.suggest(name)
	msg := fmt.Sprintf("unknown dependency %q", name)
	if len(sugg) > 0 {
		q := make([]string, len(sugg))
		for k, s := range sugg {
			q[k] = fmt.Sprintf("%q", s)
		}
		msg += "; did you mean " + strings.Join(q, " or ") + "?"
	}
	switch {
	case strings.Contains(name, "/") && strings.Contains(strings.Split(name, "/")[0], "."):
		msg += fmt.Sprintf(" For a Go tool write go:%s@latest.", name)
	case strings.HasPrefix(name, "@"):
		msg += fmt.Sprintf(" For an npm package write npm:%s.", name)
	}
	msg += " `moatc deps list` shows the known names; any Debian package can be written apt:NAME, an npm package npm:NAME, a Go tool go:PACKAGE@VERSION"
	err := newError(ErrUnknown, []Entry{e}, "%s", msg)
	err.Suggestions = sugg
	return err
}

// suggest returns up to three registry names close to name: aliases first, then names within
// a small edit distance.
func (r *Registry) suggest(name string) []string {
	name = strings.ToLower(name)
	type cand struct {
		name string
		dist int
	}
	best := map[string]int{}
	consider := func(entry, text string) {
		d := suggest.Distance(name, text)
		if d <= suggest.Limit(len(name)) && d < len(name) {
			if old, ok := best[entry]; !ok || d < old {
				best[entry] = d
			}
		}
	}
	for _, n := range r.names() {
		consider(n, n)
		for _, a := range r.entries[n].Aliases {
			if a == name {
				best[n] = -1 // an exact alias beats any spelling
			}
			consider(n, a)
		}
	}
	var cs []cand
	for n, d := range best {
		cs = append(cs, cand{n, d})
	}
	sort.Slice(cs, func(a, b int) bool {
		if cs[a].dist != cs[b].dist {
			return cs[a].dist < cs[b].dist
		}
		return cs[a].name < cs[b].name
	})
	var out []string
	for k := 0; k < len(cs) && k < 3; k++ {
		out = append(out, cs[k].name)
	}
	return out
}

// RegistryHosts returns the package registries the workload's own package managers use for
// ds (npm for node and npm packages, the Go module proxy for go, Debian's archive for apt,
// PyPI for pip), sorted: what a strict policy lets an agent reach besides its API.
func RegistryHosts(ds []Dep) []string {
	set := map[string]bool{}
	for _, d := range ds {
		switch {
		case d.Kind == KindNPM || d.Name == "node":
			set["registry.npmjs.org"] = true
		case d.Kind == KindGo || d.Name == "go":
			set["proxy.golang.org"], set["sum.golang.org"] = true, true
		case d.Kind == KindPip || d.Name == "python":
			set["pypi.org"], set["files.pythonhosted.org"] = true, true
		case d.Kind == KindApt:
			set["deb.debian.org"] = true
		}
	}
	out := make([]string, 0, len(set))
	for h := range set {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}
