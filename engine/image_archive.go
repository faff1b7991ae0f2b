package engine

import (
	"errors"
	"net/http"
	"sort"

	"github.com/containerd/containerd/v2/core/images/archive"
	"github.com/containerd/platforms"
	"github.com/moby/moby/api/types/events"

	"github.com/moatc/moatc/ctrd"
)

func init() {
	route("GET /images/get", imageSaveMany)
	route("POST /images/load", imageLoad)
}

func imageSaveMany(e *Engine, w http.ResponseWriter, r *http.Request) error {
	names := r.URL.Query()["names"]
	if len(names) == 0 {
		return invalid("no image given to save: names= is needed")
	}
	return imageSave(e, w, r, names)
}

// imageSave is GET /images/get?names= and GET /images/{name}/get (docker save): a tar as
// containerd's exporter writes it, an OCI layout with Docker's manifest.json, for the
// engine's platform. Every name is checked before the answer starts, so a missing one is a
// clean 404.
func imageSave(e *Engine, w http.ResponseWriter, r *http.Request, names []string) error {
	ctx := r.Context()
	is := e.cfg.Client.ImageService()
	opts := []archive.ExportOpt{archive.WithPlatform(platforms.DefaultStrict())}
	type saved struct{ id, name string }
	var all []saved
	for _, n := range names {
		i, byName, err := e.findImage(ctx, n)
		if err != nil {
			return err
		}
		if byName != "" {
			opts = append(opts, archive.WithImage(is, byName))
			all = append(all, saved{i.id(), ctrd.ShortName(byName)})
		} else {
			opts = append(opts, archive.WithManifest(i.target))
			all = append(all, saved{i.id(), i.id()})
		}
	}
	lw := &lazyWriter{w: w, contentType: "application/x-tar"}
	if err := e.cfg.Client.Export(ctx, lw, opts...); err != nil {
		if !lw.started {
			return err
		}
		// Mid-stream: the client sees a tar cut short; the connection is closed so it is not
		// mistaken for a whole one.
		panic(http.ErrAbortHandler)
	}
	lw.start()
	for _, s := range all {
		e.emit(events.ImageEventType, events.ActionSave, s.id, map[string]string{"name": s.name})
	}
	return nil
}

// lazyWriter starts a 200 answer at the first write: an error before it is still a proper
// error answer.
type lazyWriter struct {
	w           http.ResponseWriter
	contentType string
	started     bool
}

func (l *lazyWriter) start() {
	if !l.started {
		l.started = true
		l.w.Header().Set("Content-Type", l.contentType)
		l.w.WriteHeader(http.StatusOK)
	}
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	l.start()
	return l.w.Write(p)
}

// imageLoad is POST /images/load?quiet= (docker load): the body, a `docker save` tar or an
// OCI layout, is streamed into containerd (never held in memory), its images stored and
// unpacked; then one "Loaded image: NAME" line a name, as Docker's JSON stream. A body that is
// not such a tar is 400.
func imageLoad(e *Engine, w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	names, err := e.cfg.Client.Import(ctx, r.Body, e.cfg.Snapshotter, "")
	if err != nil {
		if errors.Is(err, ctx.Err()) {
			return err
		}
		return invalid("%v", err)
	}
	sort.Strings(names)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	for _, n := range names {
		id := ""
		if i, _, err := e.findImage(ctx, n); err == nil {
			id = i.id()
		}
		writeJSONBody(w, streamMessage{Stream: "Loaded image: " + ctrd.ShortName(n) + "\n"})
		e.emit(events.ImageEventType, events.ActionLoad, id, map[string]string{"name": ctrd.ShortName(n)})
	}
	return nil
}
