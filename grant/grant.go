// Package grant keeps the person's API tokens on the host, sealed, so that a run's proxy can
// add them to the workload's requests without the token ever entering the container. Each
// grant names the hosts it is for and the headers that carry the token there.
//
// The store is MOATC_HOME/grants.json (0600). Tokens in it are sealed with AES-256-GCM under
// a key kept apart from it: MOATC_GRANT_KEY when set (for hosts with their own secret store),
// else MOATC_HOME/grants.key (0600), made when the first grant is stored. A copy of
// grants.json alone reveals no token.
package grant

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Header is one request header a grant sets. Template holds exactly one placeholder:
// {{token}}, or {{basic:USER}} for HTTP basic auth (base64 of USER:token).
type Header struct {
	Name     string `json:"name"`
	Template string `json:"template"`
}

// Rule is what a grant sets on requests to one host (exact name, lower case, no port).
type Rule struct {
	Host    string   `json:"host"`
	Headers []Header `json:"headers"`
}

// Grant is a stored credential as moatc shows it: never the token.
type Grant struct {
	Name    string    `json:"name"`
	Kind    string    `json:"kind"` // a provider's name, or "custom"
	Rules   []Rule    `json:"rules"`
	Created time.Time `json:"created"`
}

// Custom is the kind of a grant made with `moatc grant add`.
const Custom = "custom"

// MaxToken is the longest token accepted, in bytes.
const MaxToken = 16 << 10

// Provider is a service moatc knows the shape of, so `moatc grant NAME` needs only the token.
type Provider struct {
	Name  string   // the grant's name and kind
	Title string   // for people
	Env   []string // variables that may hold the token, in order
	Rules []Rule
}

func bearer() []Header { return []Header{{Name: "Authorization", Template: "Bearer {{token}}"}} }

var providers = []Provider{
	{Name: "anthropic", Title: "Anthropic API key", Env: []string{"ANTHROPIC_API_KEY"},
		Rules: []Rule{{Host: "api.anthropic.com", Headers: []Header{{Name: "x-api-key", Template: "{{token}}"}}}}},
	{Name: "github", Title: "GitHub token", Env: []string{"GITHUB_TOKEN", "GH_TOKEN"},
		Rules: []Rule{
			{Host: "api.github.com", Headers: bearer()},
			{Host: "uploads.github.com", Headers: bearer()},
			// git over HTTPS takes the token as the password of basic auth.
			{Host: "github.com", Headers: []Header{{Name: "Authorization", Template: "Basic {{basic:x-access-token}}"}}},
		}},
	// The Gemini API takes its key in a header of its own (a key in the URL would be logged).
	{Name: "google", Title: "Google AI (Gemini API) key", Env: []string{"GEMINI_API_KEY", "GOOGLE_API_KEY"},
		Rules: []Rule{{Host: "generativelanguage.googleapis.com", Headers: []Header{{Name: "x-goog-api-key", Template: "{{token}}"}}}}},
	{Name: "openai", Title: "OpenAI API key", Env: []string{"OPENAI_API_KEY"},
		Rules: []Rule{{Host: "api.openai.com", Headers: bearer()}}},
}

// Providers returns the known providers, by name.
func Providers() []Provider {
	out := make([]Provider, len(providers))
	for i, p := range providers {
		out[i] = p.clone()
	}
	return out
}

// ProviderNamed returns the provider called name.
func ProviderNamed(name string) (Provider, bool) {
	for _, p := range providers {
		if p.Name == name {
			return p.clone(), true
		}
	}
	return Provider{}, false
}

// clone keeps callers from changing the package's providers through shared slices.
func (p Provider) clone() Provider {
	p.Env = slices.Clone(p.Env)
	p.Rules = cloneRules(p.Rules)
	return p
}

func cloneRules(rs []Rule) []Rule {
	out := make([]Rule, len(rs))
	for i, r := range rs {
		out[i] = Rule{Host: r.Host, Headers: slices.Clone(r.Headers)}
	}
	return out
}

// Hosts returns the hosts g covers, in the order of its rules.
func Hosts(g Grant) []string {
	var hosts []string
	for _, r := range g.Rules {
		if !slices.Contains(hosts, r.Host) {
			hosts = append(hosts, r.Host)
		}
	}
	return hosts
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

func checkName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%q is not a grant name: use 1 to 63 lower-case letters, digits, '_', '.' and '-', starting with a letter or digit", printable(name))
	}
	return nil
}

// Validate says what is wrong with g, if anything, so that a command can refuse it before
// asking for the token. Put checks the same.
func Validate(g Grant) error {
	if err := checkName(g.Name); err != nil {
		return err
	}
	_, err := normalize(g)
	return err
}

// normalize checks g (not its name) and returns it with its hosts lower-cased and IP addresses in canonical
// form, so that the proxy can compare them with a request's host as they are.
func normalize(g Grant) (Grant, error) {
	if _, ok := ProviderNamed(g.Kind); !ok && g.Kind != Custom {
		return g, fmt.Errorf("kind %q is not known: use %s or %s", printable(g.Kind), strings.Join(providerNames(), ", "), Custom)
	}
	// `moatc grant github` must mean the GitHub token, not whatever a custom grant took the name for.
	if p, ok := ProviderNamed(g.Name); ok && g.Kind != p.Name {
		return g, fmt.Errorf("the name %s is kept for the %s (`moatc grant %s`): choose another name, such as %s-2", g.Name, p.Title, p.Name, g.Name)
	}
	if len(g.Rules) == 0 {
		return g, errors.New("it has no host: give at least one (--host)")
	}
	g.Rules = cloneRules(g.Rules)
	seen := map[string]bool{}
	for i := range g.Rules {
		r := &g.Rules[i]
		h, err := normalizeHost(r.Host)
		if err != nil {
			return g, err
		}
		if seen[h] {
			return g, fmt.Errorf("it names host %s twice: give each host once, with all its headers", h)
		}
		seen[h] = true
		r.Host = h
		if len(r.Headers) == 0 {
			return g, fmt.Errorf("it sets no header for %s: give at least one (--header 'Authorization: Bearer {{token}}')", h)
		}
		names := map[string]bool{}
		for _, hd := range r.Headers {
			if err := checkHeader(hd); err != nil {
				return g, err
			}
			if names[strings.ToLower(hd.Name)] {
				return g, fmt.Errorf("it sets header %s twice for %s: give it once", hd.Name, h)
			}
			names[strings.ToLower(hd.Name)] = true
		}
	}
	return g, nil
}

func providerNames() []string {
	var names []string
	for _, p := range providers {
		names = append(names, p.Name)
	}
	return names
}

// normalizeHost accepts a DNS name or an IP address: no port, no wildcard, no scheme.
func normalizeHost(host string) (string, error) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil && a.Zone() == "" {
		return a.String(), nil
	}
	h := strings.ToLower(host)
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("host %q %s", printable(host), why)
	}
	switch {
	case h == "":
		return bad("is empty: give a host name such as api.example.com")
	case strings.Contains(h, "://") || strings.Contains(h, "/"):
		return bad("is a URL: give the host name alone, such as api.example.com")
	case strings.Contains(h, ":"):
		return bad("has a port: give the host name alone; the grant applies on every port")
	case strings.Contains(h, "*"):
		return bad("has a wildcard: grants name exact hosts, so list each one")
	case len(h) > 253:
		return bad("is longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return bad("is not a host name: its dot-separated parts must be 1 to 63 characters")
		}
		if strings.Trim(label, "abcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			return bad("is not a host name: use letters, digits, '-', '_' and '.'")
		}
	}
	return h, nil
}

// tchar is RFC 9110's token character set, which header names are made of.
func tchar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

func checkHeader(h Header) error {
	if h.Name == "" {
		return fmt.Errorf("a header has no name: write it as 'Name: template', such as 'Authorization: Bearer {{token}}'")
	}
	for i := 0; i < len(h.Name); i++ {
		if !tchar(h.Name[i]) {
			return fmt.Errorf("header name %q is not valid: use letters, digits and !#$%%&'*+-.^_`|~", printable(h.Name))
		}
	}
	for i := 0; i < len(h.Template); i++ {
		if c := h.Template[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return fmt.Errorf("header %s: the template has a line break or control character: a header value is one line", h.Name)
		}
	}
	if _, _, _, err := placeholder(h.Template); err != nil {
		return fmt.Errorf("header %s: %w", h.Name, err)
	}
	return nil
}

// placeholder finds the template's one placeholder (its errors do not quote the template, which
// may hold a token typed in by mistake): where it starts and ends, and the user
// of {{basic:USER}} ("" for {{token}}).
func placeholder(t string) (start, end int, user string, err error) {
	const usage = "use {{token}} or {{basic:USER}} exactly once, e.g. 'Bearer {{token}}'"
	found := 0
	for i := 0; ; {
		j := strings.Index(t[i:], "{{")
		if j < 0 {
			break
		}
		j += i
		k := strings.Index(t[j:], "}}")
		if k < 0 {
			return 0, 0, "", fmt.Errorf("the template has an unclosed {{: %s", usage)
		}
		k += j + 2
		inner := t[j+2 : k-2]
		switch {
		case inner == "token":
		case strings.HasPrefix(inner, "basic:"):
			u := inner[len("basic:"):]
			if u == "" || strings.ContainsAny(u, ":{}") {
				return 0, 0, "", fmt.Errorf("the template has a bad basic-auth user: give one without ':', as in {{basic:x-access-token}}")
			}
			user = u
		default:
			return 0, 0, "", fmt.Errorf("the template has an unknown placeholder {{%s}}: %s", printable(inner), usage)
		}
		found++
		start, end = j, k
		i = k
	}
	if found != 1 {
		return 0, 0, "", fmt.Errorf("the template has %d placeholders: %s", found, usage)
	}
	return start, end, user, nil
}

// fill puts the token into a checked template.
func fill(t, token string) string {
	start, end, user, _ := placeholder(t)
	v := token
	if user != "" {
		v = base64.StdEncoding.EncodeToString([]byte(user + ":" + token))
	}
	return t[:start] + v + t[end:]
}

// cleanToken returns the token without the one line ending that `echo` or a file adds, or
// says why it cannot go into a header. The error never contains the token.
func cleanToken(token string) (string, error) {
	if t, ok := strings.CutSuffix(token, "\r\n"); ok {
		token = t
	} else {
		token = strings.TrimSuffix(token, "\n")
	}
	switch {
	case token == "":
		return "", fmt.Errorf("the token is empty")
	case len(token) > MaxToken:
		return "", fmt.Errorf("the token is %d bytes, more than the %d a grant takes: is it the right file?", len(token), MaxToken)
	}
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case c == ' ' || c == '\t':
			// A space would let the value smuggle more into the header, and tokens have none.
			return "", fmt.Errorf("the token has a space at byte %d: give the token alone (no 'Bearer ' or other text)", i+1)
		case c < 0x20 || c == 0x7f:
			return "", fmt.Errorf("the token has a line break or control character at byte %d: give the token alone, on one line", i+1)
		case c > 0x7e:
			return "", fmt.Errorf("the token has a non-ASCII byte at byte %d: API tokens are plain ASCII; was it pasted with a stray character?", i+1)
		}
	}
	return token, nil
}

// printable quotes what a person typed for an error message, shortened.
func printable(s string) string {
	if len(s) > 80 {
		s = s[:80] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// Resolved is what the proxy adds to requests for one host of one grant.
type Resolved struct {
	Grant   string            `json:"grant"`
	Host    string            `json:"host"`
	Headers map[string]string `json:"headers"`
}

// NotFoundError says no grant has the name.
type NotFoundError struct {
	Name string
	use  bool // asked for by a run, so say how to store it
}

func (e *NotFoundError) Error() string {
	if !e.use {
		return fmt.Sprintf("no grant is named %s: `moatc grant list` shows the stored grants", e.Name)
	}
	if p, ok := ProviderNamed(e.Name); ok {
		return fmt.Sprintf("no grant is named %s: store your %s with `moatc grant %s`", e.Name, p.Title, p.Name)
	}
	return fmt.Sprintf("no grant is named %s: store it with `moatc grant add %s --host HOST --header 'Authorization: Bearer {{token}}'` (see `moatc grant add --help`)", e.Name, e.Name)
}

// aad binds a sealed token to its grant's name, kind and rules: a token moved to another
// entry, or an entry edited to send it to other hosts, no longer opens.
func aad(g Grant) []byte {
	b, _ := json.Marshal(struct {
		Kind  string `json:"kind"`
		Rules []Rule `json:"rules"`
	}{g.Kind, g.Rules})
	return append([]byte("moatc grant v1\x00"+g.Name+"\x00"), b...)
}
