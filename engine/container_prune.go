package engine

import (
	"net/http"
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

// pruneUntil reads Docker's until= filter: a time as events' since and until take it (Unix
// seconds, RFC 3339, a date, or a duration before now such as 24h); it may not be empty.
func pruneUntil(s string, now time.Time) (time.Time, error) {
	t, err := eventTime(s, now)
	if s == "" || err != nil {
		return time.Time{}, invalid("invalid until filter %q: a Unix time, an RFC 3339 time or a duration like 24h", s)
	}
	return t, nil
}
