package deps

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"

	"github.com/distribution/reference"
)

// GeneratorVersion is written into every Dockerfile; it changes when the generated text would
// change for the same list, so that such a change shows in the tag too.
const GeneratorVersion = "1"

// ImageRepo is the repository of dependency images; the tag is the Dockerfile's hash.
const ImageRepo = "moatc/run"

// User is the unprivileged account the image is set to run as (uid 1000 where that is free).
const User = "moatc"

// Cache mount ids, shared by all of moatc's builds on one BuildKit.
const (
	cacheAptLists    = "moatc-apt-lists"
	cacheAptArchives = "moatc-apt-archives"
	cacheDownloads   = "moatc-downloads"
	cacheNPM         = "moatc-npm"
	cacheGoMod       = "moatc-go-mod"
	cacheGoBuild     = "moatc-go-build"
	cachePip         = "moatc-pip"
)

// bootstrap are the Debian packages moatc-install needs to download and unpack.
var bootstrap = []string{"ca-certificates", "curl", "unzip", "xz-utils"}

const (
	installHelper = "/usr/local/libexec/moatc-install"
	netHelper     = "/usr/local/libexec/moatc-net"
)

// CASecretID is the BuildKit secret every downloading step mounts (read-only, at
// CASecretPath, never stored in the image): a PEM bundle of the CAs the downloads trust. The
// builder passes the host's bundle, so a build trusts what the host trusts, including a
// TLS-intercepting proxy's CA; without the secret the image's own bundle is used.
const (
	CASecretID   = "moatc-ca"
	CASecretPath = "/run/secrets/moatc-ca.crt"
)

// caMount is the secret mount every downloading RUN carries.
var caMount = "type=secret,id=" + CASecretID + ",target=" + CASecretPath + ",required=false"

// trustEnv points curl, Go, node/npm and pip at the CA secret when it was given.
const trustEnv = `if [ -s ` + CASecretPath + ` ]; then
  export CURL_CA_BUNDLE=` + CASecretPath + ` SSL_CERT_FILE=` + CASecretPath + ` NODE_EXTRA_CA_CERTS=` + CASecretPath + ` PIP_CERT=` + CASecretPath + `
fi
`

// netScript runs a package manager with the CA secret trusted.
const netScript = `#!/bin/sh
# moatc-net CMD...  (written by moatc)
# Runs CMD (npm, go, pip) trusting the CA bundle moatc passes to the build as a secret.
set -eu
` + trustEnv + `exec "$@"
`

// installScript fetches a pinned download once into a cache mount, checks it, unpacks it and
// places its parts. A checksum mismatch fails the build with a message naming both sums.
const installScript = `#!/bin/sh
# moatc-install FORMAT URL SHA256 SRC=DEST...  (written by moatc)
# Downloads URL into moatc's download cache (a BuildKit cache mount, one file per checksum),
# checks its sha256, unpacks it (tar.gz, tar.xz, zip; "file": the download is the program
# itself, placed from the name "download") and moves each SRC in it to DEST.
set -eu
` + trustEnv + `format=$1 url=$2 sum=$3
shift 3
cache=/var/cache/moatc/downloads
mkdir -p "$cache"
file=$cache/$sum
if ! { [ -f "$file" ] && echo "$sum  $file" | sha256sum -c --status; }; then
  rm -f "$file" "$file.part"
  echo "moatc: fetching $url"
  if ! curl -fsSL --retry 3 --retry-connrefused -o "$file.part" "$url"; then
    rm -f "$file.part"
    echo "moatc: download failed: $url" >&2
    exit 1
  fi
  got=$(sha256sum "$file.part" | cut -d' ' -f1)
  if [ "$got" != "$sum" ]; then
    rm -f "$file.part"
    echo "moatc: checksum mismatch for $url: expected sha256 $sum, got $got" >&2
    exit 1
  fi
  mv "$file.part" "$file"
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case $format in
  tar.gz) tar -xzf "$file" -C "$work" --no-same-owner ;;
  tar.xz) tar -xJf "$file" -C "$work" --no-same-owner ;;
  zip) unzip -q "$file" -d "$work" ;;
  file) cp "$file" "$work/download" && chmod 0755 "$work/download" ;;
  *) echo "moatc-install: unknown format $format" >&2; exit 1 ;;
esac
for p in "$@"; do
  src=${p%%=*} dst=${p#*=}
  if [ ! -e "$work/$src" ]; then
    echo "moatc: $url has no $src" >&2
    exit 1
  fi
  mkdir -p "$(dirname "$dst")"
  rm -rf "$dst"
  mv "$work/$src" "$dst"
done
`

// Dockerfile writes the image recipe for the plan on top of base (a Debian-family image;
// e.g. debian:bookworm-slim, written out in full as docker.io/library/debian:bookworm-slim).
// Layers go from what changes least to what changes most: setup, runtimes, Debian packages,
// downloads, npm globals, Go tools, pip packages. The output depends only on the resolved
// content, never on the order or line numbers of the list: same list, same bytes.
func (p *Plan) Dockerfile(base string) []byte {
	var b bytes.Buffer
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p.writeHeader(w, base)
	k := p.byKind()
	system := p.writeSystem(w, k)
	p.writeRuntimes(w, k.runtimes)
	p.writeApt(w, k.apts, system)
	for _, it := range k.binaries {
		w("\n# %s %s (%s).\n", it.info.Name, it.Version, shortSource(it.info.Source))
		downloadRun(w, p.Scope, it.ver.Files, it.info.Links)
	}
	p.writeLanguagePackages(w, k)
	w("\nLABEL dev.moatc.generator=%q dev.moatc.dependencies=%q\n", GeneratorVersion, strings.Join(p.canonical(), " "))
	w("USER %s\n", User)
	return b.Bytes()
}

type writer = func(format string, a ...any)

// planKinds is a plan's items by what installs them.
type planKinds struct {
	runtimes, apts, binaries, npms, gos, pips []Item
	downloads                                 bool // some runtime or binary is a pinned download
}

func (p *Plan) byKind() planKinds {
	var k planKinds
	for _, it := range p.Items {
		switch it.Kind {
		case KindRuntime, KindDocker:
			k.runtimes = append(k.runtimes, it)
		case KindApt:
			k.apts = append(k.apts, it)
		case KindBinary:
			k.binaries = append(k.binaries, it)
		case KindNPM:
			k.npms = append(k.npms, it)
		case KindGo:
			k.gos = append(k.gos, it)
		case KindPip:
			k.pips = append(k.pips, it)
		}
	}
	for _, it := range append(append([]Item{}, k.runtimes...), k.binaries...) {
		if it.ver != nil && len(it.ver.Files) > 0 {
			k.downloads = true
		}
	}
	return k
}

// writeHeader writes the comments, the base and the user runs use.
func (p *Plan) writeHeader(w writer, base string) {
	w("# Generated by moatc (dependency image generator %s). Do not edit: the image tag is a hash of these bytes.\n", GeneratorVersion)
	w("# Dependencies: %s\n", strings.Join(p.canonical(), " "))

	w("FROM %s\n", NormalizeBase(base))
	w("SHELL [\"/bin/sh\", \"-euc\"]\n")
	w("ARG DEBIAN_FRONTEND=noninteractive\n")
	if p.Scope != "" {
		// BuildKit leaves cache mount ids out of a step's cache key, so scoped ids alone would
		// still let a step's result (made with one workspace's caches) serve another
		// workspace. An ARG is in the environment of every RUN below: in every key.
		w("# The workspace's cache scope: its caches and layers are its own.\n")
		w("ARG MOATC_CACHE_SCOPE=%s\n", p.Scope)
	}

	w("\n# The unprivileged user runs use, and apt set to keep its downloads for the cache mounts.\n")
	w("RUN rm -f /etc/apt/apt.conf.d/docker-clean \\\n")
	w(" && echo 'Binary::apt::APT::Keep-Downloaded-Packages \"true\";' > /etc/apt/apt.conf.d/99moatc-keep-downloads \\\n")
	w(" && if ! id -u %[1]s >/dev/null 2>&1; then \\\n", User)
	w("      if getent passwd 1000 >/dev/null; then useradd --create-home --shell /bin/bash %[1]s; \\\n", User)
	w("      else useradd --create-home --uid 1000 --shell /bin/bash %[1]s; fi; \\\n", User)
	w("    fi\n")

}

// writeSystem writes the Debian packages the runtimes and downloads need (a step that changes
// only with the runtimes) and moatc's helper scripts, and returns those packages.
func (p *Plan) writeSystem(w writer, k planKinds) []string {
	network := k.downloads || len(k.npms) > 0 || len(k.gos) > 0 || len(k.pips) > 0
	var system []string
	if k.downloads {
		system = append(system, bootstrap...)
	}
	for _, it := range k.runtimes {
		system = append(system, it.info.Apt...)
	}
	system = uniqueSorted(system)
	if len(system) > 0 {
		w("\n# Debian packages for the runtimes and downloads.\n")
		aptRun(w, p.Scope, system)
	}
	if k.downloads {
		w("\n# moatc-install: pinned downloads, checked by sha256.\n")
		w("COPY <<'EOF' %s\n%sEOF\n", installHelper, installScript)
	}
	if network {
		w("\n# moatc-net: package managers trusting the CA bundle moatc passes as a build secret.\n")
		w("COPY <<'EOF' %s\n%sEOF\n", netHelper, netScript)
	}
	return system
}

func (p *Plan) writeRuntimes(w writer, runtimes []Item) {
	var path []string
	for _, it := range runtimes {
		links := it.info.Links
		if it.Kind == KindDocker {
			// Nothing to install: moatc mounts its CLI and the engine's socket (open to every
			// user of the container) when the run starts.
			w("\n# docker:%s (%s): mounted by moatc when the run starts.\n", it.Version, shortSource(it.info.Source))
			continue
		}
		if len(it.ver.Files) == 0 && len(links) == 0 {
			continue // Debian's build, installed above
		}
		w("\n# %s %s (%s).\n", it.info.Name, it.Version, shortSource(it.info.Source))
		downloadRun(w, p.Scope, it.ver.Files, links)
		path = append(path, it.info.Path...)
	}
	if len(path) > 0 {
		w("ENV PATH=%s:$PATH\n", strings.Join(path, ":"))
	}

}

// writeApt writes the list's Debian packages but those already installed with system.
func (p *Plan) writeApt(w writer, apts []Item, system []string) {
	var pkgs []string
	links := map[string]string{}
	for _, it := range apts {
		if it.info != nil {
			pkgs = append(pkgs, it.info.Apt...)
			for l, t := range it.info.Links {
				links[l] = t
			}
		} else {
			pkgs = append(pkgs, it.pkg)
		}
	}
	pkgs = minus(uniqueSorted(pkgs), system)
	if len(pkgs) > 0 || len(links) > 0 {
		w("\n# Debian packages from the list.\n")
		aptRun(w, p.Scope, pkgs, linkCmds(links)...)
	}

}

// writeLanguagePackages writes the npm, Go and pip installs.
func (p *Plan) writeLanguagePackages(w writer, k planKinds) {
	npms, gos, pips := k.npms, k.gos, k.pips
	if len(npms) > 0 {
		w("\n# npm packages, installed globally (/usr/local).\n")
		c := "npm install --global --no-fund --no-audit --no-update-notifier --loglevel=warn"
		for _, it := range npms {
			c += " \\\n      " + shq(it.pkg+"@"+it.Version)
		}
		run(w, []string{caMount, cache(p.Scope, cacheNPM, "/root/.npm")}, []string{"sh " + netHelper + " " + c})
	}

	if len(gos) > 0 {
		w("\n# Go tools, built with go install into /usr/local/bin.\n")
		var cmds []string
		for _, it := range gos {
			cmds = append(cmds, "GOBIN=/usr/local/bin CGO_ENABLED=0 sh "+netHelper+" go install "+shq(it.pkg+"@"+it.Version))
		}
		run(w, []string{caMount, cache(p.Scope, cacheGoMod, "/root/go/pkg/mod"), cache(p.Scope, cacheGoBuild, "/root/.cache/go-build")}, cmds)
	}

	if len(pips) > 0 {
		w("\n# Python packages from %s.\n", p.pipIndex)
		c := "sh " + netHelper + " pip install --break-system-packages --root-user-action=ignore --disable-pip-version-check --index-url " + shq(p.pipIndex)
		for _, it := range pips {
			spec := it.pkg
			if it.Version != "" {
				spec += "==" + it.Version
			}
			c += " \\\n      " + shq(spec)
		}
		run(w, []string{caMount, cache(p.Scope, cachePip, "/root/.cache/pip")}, []string{c})
	}

}

// Tag is the image name for the plan on base: moatc/run:<first 16 hex digits of the sha256 of
// the Dockerfile>. The Dockerfile spells out the base, every resolved version and checksum,
// and the generator version, so the tag changes exactly when the image would.
func (p *Plan) Tag(base string) string {
	sum := sha256.Sum256(p.Dockerfile(base))
	return ImageRepo + ":" + hex.EncodeToString(sum[:])[:16]
}

// canonical lists the resolved items as text, in plan order: e.g. "node@24.21.0",
// "apt:jq", "npm:typescript@latest".
func (p *Plan) canonical() []string {
	var out []string
	for _, it := range p.Items {
		switch {
		case it.Kind == KindApt && it.info != nil:
			out = append(out, it.info.Name)
		case it.Kind == KindApt:
			out = append(out, it.Key)
		case it.Kind == KindDocker:
			out = append(out, "docker:"+it.Version)
		case it.Version == "":
			out = append(out, it.Key)
		default:
			out = append(out, it.Key+"@"+it.Version)
		}
	}
	return out
}

// String is the plan as one line, e.g. "node@24.21.0 jq npm:typescript@latest".
func (p *Plan) String() string { return strings.Join(p.canonical(), " ") }

// NormalizeBase writes an image reference in full (debian:bookworm-slim becomes
// docker.io/library/debian:bookworm-slim), so both spellings give one tag. A reference that
// does not parse is kept with anything but its visible characters removed; the build then
// reports it.
func NormalizeBase(base string) string {
	if n, err := reference.ParseNormalizedNamed(base); err == nil {
		return reference.TagNameOnly(n).String()
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == 0x7f {
			return -1
		}
		return r
	}, base)
}

// cache is a cache mount in the plan's scope: one workspace's build never reads what another
// workspace's build wrote (an npm postinstall or a go build could poison a shared cache).
func cache(scope, id, target string) string {
	if scope != "" {
		id += "-" + scope
	}
	return "type=cache,id=" + id + ",target=" + target + ",sharing=locked"
}

// run writes one RUN instruction: its cache mounts, then its commands joined with &&.
func run(w func(string, ...any), mounts []string, cmds []string) {
	w("RUN ")
	for _, m := range mounts {
		w("--mount=%s \\\n    ", m)
	}
	w("%s\n", strings.Join(cmds, " \\\n && "))
}

func aptRun(w func(string, ...any), scope string, pkgs []string, after ...string) {
	cmds := []string{"apt-get update -qq"}
	if len(pkgs) > 0 {
		cmds = append(cmds, "apt-get install -y -qq --no-install-recommends "+strings.Join(pkgs, " "))
	}
	run(w, []string{cache(scope, cacheAptLists, "/var/lib/apt/lists"), cache(scope, cacheAptArchives, "/var/cache/apt")}, append(cmds, after...))
}

func downloadRun(w func(string, ...any), scope string, files []File, extra map[string]string) {
	var cmds []string
	for _, f := range files {
		c := fmt.Sprintf("sh %s %s %s %s", installHelper, f.Format, shq(f.URL), f.SHA256)
		for _, src := range sortedKeys(f.Place) {
			c += " \\\n      " + shq(src+"="+f.Place[src])
		}
		cmds = append(cmds, c)
		cmds = append(cmds, linkCmds(f.Links)...)
	}
	cmds = append(cmds, linkCmds(extra)...)
	run(w, []string{caMount, cache(scope, cacheDownloads, "/var/cache/moatc/downloads")}, cmds)
}

func linkCmds(links map[string]string) []string {
	var out []string
	for _, l := range sortedKeys(links) {
		out = append(out, fmt.Sprintf("ln -sfn %s %s", shq(links[l]), shq(l)))
	}
	return out
}

// shq quotes s for the shell. Everything put in a RUN line is checked against a strict
// character set first; the quotes are the second wall.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func shortSource(s string) string {
	if i := strings.IndexAny(s, ":("); i > 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func sortedKeys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func uniqueSorted(ss []string) []string {
	out := append([]string{}, ss...)
	sort.Strings(out)
	var u []string
	for k, s := range out {
		if k == 0 || s != out[k-1] {
			u = append(u, s)
		}
	}
	return u
}

func minus(a, b []string) []string {
	var out []string
	for _, s := range a {
		found := false
		for _, t := range b {
			if s == t {
				found = true
			}
		}
		if !found {
			out = append(out, s)
		}
	}
	return out
}
