package engine

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
)

func init() {
	route("POST /containers/prune", containerPrune)
}

// containerPrune is POST /containers/prune?filters=: removes every container not running
// (created or exited) that the filters (until, label, label!) keep. SpaceReclaimed is 0:
// the snapshots' sizes are not measured.
func containerPrune(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), "until", "label", "label!")
	if err != nil {
		return err
	}
	var until time.Time
	for _, u := range f["until"] {
		t, err := pruneUntil(u, time.Now())
		if err != nil {
			return err
		}
		until = t
	}
	report := container.PruneReport{ContainersDeleted: []string{}}
	for _, rec := range e.snapshot() {
		if rec.State.Status == container.StateRunning || rec.State.Status == container.StatePaused {
			continue
		}
		if !until.IsZero() && !rec.Created.Before(until) {
			continue
		}
		var labels map[string]string
		if rec.Config != nil {
			labels = rec.Config.Labels
		}
		if !f.matchLabel(labels) || !f.matchNotLabel(labels) {
			continue
		}
		c, err := e.lookup(rec.ID)
		if err != nil {
			continue // gone meanwhile
		}
		if err := e.removeContainer(r.Context(), c, false); err != nil {
			continue // started meanwhile: not prunable any more
		}
		report.ContainersDeleted = append(report.ContainersDeleted, rec.ID)
	}
	e.emit(events.ContainerEventType, events.ActionPrune, "", map[string]string{"reclaimed": "0"})
	return writeJSON(w, http.StatusOK, report)
}

// pruneUntil reads Docker's until= filter: a Unix time (with fractional seconds), an
// RFC 3339 time, or a duration before now ("24h", "10m").
func pruneUntil(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	if sec, frac, ok := strings.Cut(s, "."); ok || sec != "" {
		if n, err := strconv.ParseInt(sec, 10, 64); err == nil {
			ns := int64(0)
			if ok {
				f := (frac + "000000000")[:9]
				if ns, err = strconv.ParseInt(f, 10, 64); err != nil {
					return time.Time{}, invalid("invalid until filter %q", s)
				}
			}
			return time.Unix(n, ns), nil
		}
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	return time.Time{}, invalid("invalid until filter %q: a Unix time, an RFC 3339 time or a duration like 24h", s)
}
