package engine

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moatc/moatc/run"
)

func init() {
	route("GET /containers/{id}/logs", containerLogs)
}

// containerLogs is GET /containers/{id}/logs?stdout=1&stderr=1&follow=1&tail=N&timestamps=1
// &since=T&until=T: the recorded output, raw with a TTY, framed otherwise; with follow, until
// the container's run ends or the client leaves.
func containerLogs(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	stdout, stderr := boolParam(r, "stdout"), boolParam(r, "stderr")
	if !stdout && !stderr {
		return invalid("Bad parameters: you must choose at least one stream")
	}
	o := run.ReadOptions{Follow: boolParam(r, "follow"), Timestamps: boolParam(r, "timestamps")}
	if t := r.URL.Query().Get("tail"); t != "" && t != "all" {
		n, err := strconv.Atoi(t)
		if err != nil || n < 0 {
			return invalid("invalid value for tail: %q (a number of lines, or all)", t)
		}
		o.Tail = n
		if n == 0 {
			o.New = true // no line of what is there
		}
	}
	if o.Since, err = unixTime(r.URL.Query().Get("since")); err != nil {
		return err
	}
	if o.Until, err = unixTime(r.URL.Query().Get("until")); err != nil {
		return err
	}
	tty := c.rec.Config.Tty
	w.Header().Set("Content-Type", streamType(tty))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	out, errw := streamWriters(&flusher{w: w, rc: rc}, tty, stdout, stderr)
	ended := func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return c.removed || (c.exits >= c.starts && !c.starting)
	}
	// An error here (the client left, a damaged log) cannot change the answer any more.
	e.log(c).Read(r.Context(), o, out, errw, ended)
	return nil
}

// unixTime reads Docker's time parameters: Unix seconds with an optional fraction
// ("1700000000.5"), or RFC 3339. "" and "0" are no bound.
func unixTime(s string) (time.Time, error) {
	if s == "" || s == "0" {
		return time.Time{}, nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	sec, frac, _ := strings.Cut(s, ".")
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil || len(frac) > 9 {
		return time.Time{}, invalid("invalid time %q: Unix seconds (with an optional fraction) or RFC 3339", s)
	}
	var ns int64
	if frac != "" {
		f, err := strconv.ParseInt((frac + "000000000")[:9], 10, 64)
		if err != nil {
			return time.Time{}, invalid("invalid time %q: Unix seconds (with an optional fraction) or RFC 3339", s)
		}
		ns = f
	}
	return time.Unix(n, ns), nil
}
