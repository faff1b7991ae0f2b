package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moby/moby/api/types/jsonstream"
	"github.com/moby/moby/api/types/registry"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func init() {
	route("POST /images/create", imageCreate)
	route("GET /images/search", imageSearch)
}

// streamMessage is one line of Docker's JSON progress stream (pull, load, push): the API
// module's jsonstream.Message lacks the "progress" text and the "error" string clients read.
type streamMessage struct {
	Stream       string               `json:"stream,omitempty"`
	Status       string               `json:"status,omitempty"`
	Progress     *jsonstream.Progress `json:"progressDetail,omitempty"`
	ProgressText string               `json:"progress,omitempty"`
	ID           string               `json:"id,omitempty"`
	ErrorDetail  *jsonstream.Error    `json:"errorDetail,omitempty"`
	Error        string               `json:"error,omitempty"`
}

func imageSearch(_ *Engine, _ http.ResponseWriter, _ *http.Request) error {
	return notImplemented("moatc does not support searching registries yet")
}

// imageCreate is POST /images/create?fromImage=&tag= (docker pull): a pull through
// containerd, with Docker's progress stream. What fails before the registry has answered is a
// plain error answer (as Docker's, which starts its stream at the first progress); what fails
// after is an error line in the stream. fromSrc (docker import) is not served.
func imageCreate(e *Engine, w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	if q.Get("fromSrc") != "" {
		return notImplemented("moatc does not support importing a root file system (docker import) yet: load an image with docker load")
	}
	from, tag := q.Get("fromImage"), q.Get("tag")
	if from == "" {
		return invalid("fromImage is needed: the image to pull")
	}
	ref := from
	if tag != "" {
		if strings.HasPrefix(tag, "sha256:") {
			ref += "@" + tag
		} else {
			ref += ":" + tag
		}
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return invalid("invalid reference format: %s", ref)
	}
	named = reference.TagNameOnly(named)
	if done, err := e.pullReaperImage(w, r, named); done || err != nil {
		return err
	}
	creds, err := registryCreds(r.Header.Get(registry.AuthHeader))
	if err != nil {
		return err
	}
	var before string
	if old, err := e.cfg.Client.ImageService().Get(r.Context(), named.String()); err == nil {
		before = old.Target.Digest.String()
	}
	p := &pullProgress{w: w, rc: http.NewResponseController(w), named: named, cs: e.cfg.Client.ContentStore()}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	go p.poll(ctx)
	img, err := e.pull(ctx, named, p.seen, creds)
	cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done = true
	if err != nil {
		if !p.started {
			var ae *apiError
			if errors.As(err, &ae) {
				return ae // refused before any registry was asked
			}
			if errdefs.IsNotFound(err) {
				return notFound("pull access denied for %s, repository does not exist or may require 'docker login': %v", reference.FamiliarName(named), err)
			}
			if errors.Is(err, context.Canceled) {
				return err
			}
			return fmt.Errorf("pulling %s: %w", reference.FamiliarString(named), unwrapPull(err))
		}
		msg := err.Error()
		p.send(streamMessage{ErrorDetail: &jsonstream.Error{Message: msg}, Error: msg})
		return nil
	}
	p.start()
	for _, l := range p.layers {
		p.send(streamMessage{Status: "Pull complete", Progress: &jsonstream.Progress{}, ID: shortDigest(l.Digest.String())})
	}
	id := img.Target().Digest.String()
	p.send(streamMessage{Status: "Digest: " + id})
	status := "Status: Downloaded newer image for " + reference.FamiliarString(named)
	if before == id {
		status = "Status: Image is up to date for " + reference.FamiliarString(named)
	}
	p.send(streamMessage{Status: status})
	return nil
}

// unwrapPull drops ctrd's "pulling NAME: " in front, as the answer says it already; the
// engine's own refusals (checkRegistry's) are answers as they are.
func unwrapPull(err error) error {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// registryCreds decodes X-Registry-Auth (base64url JSON of an AuthConfig, as the CLI sends
// it) into the credentials the pull gives its registry. Nothing of it is ever logged.
func registryCreds(header string) (func(string) (string, string, error), error) {
	if header == "" {
		return nil, nil
	}
	var raw []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.URLEncoding, base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
		if raw, err = enc.DecodeString(header); err == nil {
			break
		}
	}
	if err != nil {
		return nil, invalid("invalid X-Registry-Auth header: it is not base64")
	}
	var ac registry.AuthConfig
	if err := json.Unmarshal(raw, &ac); err != nil {
		return nil, invalid("invalid X-Registry-Auth header: it is not an auth config")
	}
	user, secret := ac.Username, ac.Password
	if ac.Auth != "" && user == "" {
		if b, err := base64.StdEncoding.DecodeString(ac.Auth); err == nil {
			user, secret, _ = strings.Cut(string(b), ":")
		}
	}
	if ac.IdentityToken != "" {
		user, secret = "", ac.IdentityToken
	}
	if user == "" && secret == "" {
		return nil, nil
	}
	server := ac.ServerAddress
	return func(host string) (string, string, error) {
		if server == "" || credsFor(server, host) {
			return user, secret, nil
		}
		return "", "", nil
	}, nil
}

// credsFor reports whether credentials saved for server (as the CLI names it: a host, a
// URL, https://index.docker.io/v1/ for Docker Hub) are for registry host.
func credsFor(server, host string) bool {
	s := strings.TrimPrefix(strings.TrimPrefix(server, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	if s == host {
		return true
	}
	hub := func(h string) bool {
		return h == "docker.io" || h == "index.docker.io" || h == "registry-1.docker.io"
	}
	return hub(s) && hub(host)
}

// pullProgress turns what containerd does for a pull into Docker's progress stream: the
// layers as the pull meets them, their bytes from containerd's ingests.
type pullProgress struct {
	w     http.ResponseWriter
	rc    *http.ResponseController
	named reference.Named
	cs    content.Store

	mu      sync.Mutex
	started bool // the answer has begun
	done    bool
	layers  []ocispec.Descriptor
}

// start begins the answer with "Pulling from REPO". Call with p.mu held.
func (p *pullProgress) start() {
	if p.started {
		return
	}
	p.started = true
	p.w.Header().Set("Content-Type", "application/json")
	p.w.WriteHeader(http.StatusOK)
	id := "latest"
	if t, ok := p.named.(reference.Tagged); ok {
		id = t.Tag()
	} else if d, ok := p.named.(reference.Digested); ok {
		id = d.Digest().String()
	}
	p.send(streamMessage{Status: "Pulling from " + reference.Path(p.named), ID: id})
}

// send writes one line. Call with p.mu held.
func (p *pullProgress) send(m streamMessage) {
	writeJSONBody(p.w, m)
	p.rc.Flush()
}

// seen is told of each blob before it is fetched: the registry has answered.
func (p *pullProgress) seen(d ocispec.Descriptor) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return
	}
	p.start()
	if !images.IsLayerType(d.MediaType) {
		return
	}
	for _, l := range p.layers {
		if l.Digest == d.Digest {
			return
		}
	}
	p.layers = append(p.layers, d)
	status := "Pulling fs layer"
	if _, err := p.cs.Info(context.Background(), d.Digest); err == nil {
		status = "Already exists"
	}
	p.send(streamMessage{Status: status, Progress: &jsonstream.Progress{}, ID: shortDigest(d.Digest.String())})
}

// poll reports the layers' downloads from containerd's ingests until ctx ends.
func (p *pullProgress) poll(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sts, err := p.cs.ListStatuses(ctx)
		if err != nil {
			continue
		}
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			return
		}
		for _, st := range sts {
			for _, l := range p.layers {
				if st.Ref != remotes.MakeRefKey(ctx, l) || st.Total == 0 {
					continue
				}
				p.send(streamMessage{Status: "Downloading", ID: shortDigest(l.Digest.String()),
					Progress:     &jsonstream.Progress{Current: st.Offset, Total: st.Total},
					ProgressText: progressBar(st.Offset, st.Total)})
			}
		}
		p.mu.Unlock()
	}
}

// progressBar is Docker's text of a download: [=====>     ]  1.2MB/3.4MB.
func progressBar(cur, total int64) string {
	const width = 50
	n := int(float64(width) * float64(cur) / float64(total))
	n = min(max(n, 0), width)
	bar := strings.Repeat("=", n)
	if n < width {
		bar += ">" + strings.Repeat(" ", width-n-1)
	}
	return fmt.Sprintf("[%s] %s/%s", bar, humanBytes(cur), humanBytes(total))
}

func humanBytes(n int64) string {
	f := float64(n)
	for _, u := range []string{"B", "kB", "MB", "GB"} {
		if f < 1000 {
			return fmt.Sprintf("%.3g%s", f, u)
		}
		f /= 1000
	}
	return fmt.Sprintf("%.3gTB", f)
}

// shortDigest is a layer's id in the stream: 12 hex digits.
func shortDigest(d string) string { return shortImageID(d) }
