package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// maxJSONBody caps a JSON request body. Docker has no cap; moatc's engine serves an untrusted
// workload, and no create or update body comes near it (a container with a thousand
// environment variables is under 100 KiB).
const maxJSONBody = 1 << 20

// decodeJSON reads r's body, at most maxJSONBody bytes, as JSON into v. Unknown fields are
// ignored, as Docker ignores them (newer clients send fields older daemons do not know).
// An empty body leaves v as it is when allowEmpty.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, allowEmpty bool) error {
	b, err := readBody(w, r)
	if err != nil {
		return err
	}
	return decodeJSONBytes(b, v, allowEmpty)
}

// readBody reads r's body, at most maxJSONBody bytes: beyond, 413 (and the connection is
// closed, so the rest is never read).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxJSONBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errTooLarge{limit: mbe.Limit}
		}
		return nil, invalid("reading the request body: %v", err)
	}
	return b, nil
}

// decodeJSONBytes is decodeJSON's pure part, for tests and fuzzing.
func decodeJSONBytes(b []byte, v any, allowEmpty bool) error {
	if len(bytes.TrimSpace(b)) == 0 {
		if allowEmpty {
			return nil
		}
		return invalid("invalid JSON: the request body is empty")
	}
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return invalid("invalid JSON: %v", err)
	}
	// One value only: Docker refuses a body with more after it.
	if _, err := d.Token(); err != io.EOF {
		return invalid("invalid JSON: unexpected data after the JSON object")
	}
	return nil
}

// filters are a list request's filters= parameter: each key's values.
type filters map[string][]string

// parseFilters reads the filters= JSON: {"label":{"a=b":true}}, or the older
// {"label":["a=b"]} some clients still send. Keys not in allowed are refused, as Docker does.
func parseFilters(s string, allowed ...string) (filters, error) {
	f := filters{}
	if strings.TrimSpace(s) == "" {
		return f, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, invalid("invalid filters: %v", err)
	}
	for k, v := range raw {
		var set map[string]bool
		if err := json.Unmarshal(v, &set); err == nil {
			for val, on := range set {
				if on {
					f[k] = append(f[k], val)
				}
			}
			sort.Strings(f[k])
			continue
		}
		var list []string
		if err := json.Unmarshal(v, &list); err != nil {
			return nil, invalid("invalid filters: the value of %q is neither an object of booleans nor a list of strings", k)
		}
		f[k] = append(f[k], list...)
	}
	for k := range f {
		ok := false
		for _, a := range allowed {
			ok = ok || a == k
		}
		if !ok {
			return nil, invalid("invalid filter '%s'", k)
		}
	}
	return f, nil
}

// matchLabel reports whether labels satisfy every label filter: "key" (present) or
// "key=value".
func (f filters) matchLabel(labels map[string]string) bool {
	for _, want := range f["label"] {
		k, v, hasValue := strings.Cut(want, "=")
		got, ok := labels[k]
		if !ok || (hasValue && got != v) {
			return false
		}
	}
	return true
}

// matchNotLabel reports whether labels satisfy no "label!" filter ("key" or "key=value"), as
// the prune endpoints take it.
func (f filters) matchNotLabel(labels map[string]string) bool {
	for _, not := range f["label!"] {
		if (filters{"label": {not}}).matchLabel(labels) {
			return false
		}
	}
	return true
}

// matchAny reports whether key has no filter or one of its values satisfies match.
func (f filters) matchAny(key string, match func(string) bool) bool {
	vals := f[key]
	if len(vals) == 0 {
		return true
	}
	for _, v := range vals {
		if match(v) {
			return true
		}
	}
	return false
}

// matchRegexp is Docker's way for name filters: the value is a regular expression searched
// in the name ("/web" matches "web"; "^/web$" only it). A value that is not one matches
// literally.
func matchRegexp(pattern, s string) bool {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return strings.Contains(s, pattern)
	}
	return re.MatchString(s)
}

// boolParam reads a query flag as Docker does: absent, "", "0", "no", "false" and "none"
// are false; anything else is true.
func boolParam(r *http.Request, name string) bool {
	switch strings.ToLower(strings.TrimSpace(r.URL.Query().Get(name))) {
	case "", "0", "no", "false", "none":
		return false
	}
	return true
}

// intParam reads an integer query parameter, def when absent.
func intParam(r *http.Request, name string, def int) (int, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, invalid("invalid value for %s: %q is not an integer", name, s)
	}
	return n, nil
}
