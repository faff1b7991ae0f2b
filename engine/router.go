package engine

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
)

// API versions. The newest is the one of the API types moatc uses (github.com/moby/moby/api
// v1.57.0, whose swagger.yaml is version 1.57); the oldest is the oldest any client still
// sends. Clients take the lower of theirs and MaxAPIVersion from /_ping.
const (
	MaxAPIVersion = "1.57"
	MinAPIVersion = "1.24"
)

// handler serves one endpoint. An error it returns becomes Docker's error answer (see
// errors.go); a handler that has written its answer returns nil.
type handler func(e *Engine, w http.ResponseWriter, r *http.Request) error

// routes are the endpoints, by net/http pattern ("GET /containers/{id}/json"). Each endpoint
// file adds its own in an init func, so endpoints are added without touching a shared list.
var routes = map[string]handler{}

// route registers an endpoint. A pattern given twice is a programming error.
func route(pattern string, h handler) {
	if _, ok := routes[pattern]; ok {
		panic("engine: route registered twice: " + pattern)
	}
	routes[pattern] = h
}

// versionPrefix is the optional /vX.Y in front of every path.
var versionPrefix = regexp.MustCompile(`^/v([0-9]+)\.([0-9]+)(/.*)$`)

type versionKey struct{}

// newMux builds the engine's handler: the version prefix stripped (any version is accepted:
// an old client gets what this engine serves, and a client newer than it is not refused
// either: Java clients pin versions, and a daemon refusing them broke their users), Docker's
// headers on every answer, the routes, and 501 for anything else.
func (e *Engine) newMux() http.Handler {
	mux := http.NewServeMux()
	for pattern, h := range routes {
		mux.Handle(pattern, e.serve(h))
	}
	mux.Handle("/", e.serve(notSupported))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		version := MaxAPIVersion
		if m := versionPrefix.FindStringSubmatch(r.URL.Path); m != nil {
			version = m[1] + "." + m[2]
			r.URL.Path = m[3]
			if r.URL.RawPath != "" {
				if rm := versionPrefix.FindStringSubmatch(r.URL.RawPath); rm != nil {
					r.URL.RawPath = rm[3]
				}
			}
		}
		r = r.WithContext(context.WithValue(r.Context(), versionKey{}, version))
		h := w.Header()
		h.Set("Api-Version", MaxAPIVersion)
		h.Set("Docker-Experimental", "false")
		h.Set("Ostype", "linux")
		h.Set("Server", "moatc/"+e.cfg.Version+" (linux)")
		mux.ServeHTTP(w, r)
	})
}

// serve turns a handler's error into Docker's error answer.
func (e *Engine) serve(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(e, w, r); err != nil {
			writeError(w, err)
		}
	})
}

// notSupported answers what moatc does not serve (yet): 501, Docker's error shape.
func notSupported(_ *Engine, _ http.ResponseWriter, r *http.Request) error {
	return notImplemented("moatc does not support %s %s yet", r.Method, r.URL.Path)
}

// apiVersion is the version the request's path asked for, or MaxAPIVersion.
func apiVersion(r *http.Request) string {
	if v, ok := r.Context().Value(versionKey{}).(string); ok {
		return v
	}
	return MaxAPIVersion
}

// versionLess compares two "X.Y" API versions; a malformed one counts as 0.0.
func versionLess(a, b string) bool {
	am, an := splitVersion(a)
	bm, bn := splitVersion(b)
	return am < bm || (am == bm && an < bn)
}

func splitVersion(v string) (int, int) {
	maj, min, _ := strings.Cut(v, ".")
	x, err1 := strconv.Atoi(maj)
	y, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil {
		return 0, 0
	}
	return x, y
}
