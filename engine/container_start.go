package engine

import (
	"net/http"
	"time"

	"github.com/moby/sys/signal"
)

func init() {
	route("POST /containers/{id}/start", containerStart)
	route("POST /containers/{id}/restart", containerRestart)
}

// containerStart is POST /containers/{id}/start: 204, or 304 when it runs already.
func containerStart(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	if r.URL.Query().Get("checkpoint") != "" {
		return notImplemented("moatc does not support checkpoints")
	}
	e.setManuallyStopped(c, false)
	if err := e.startContainer(r.Context(), c); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// containerRestart is POST /containers/{id}/restart?t=SECONDS&signal=SIG: stop (if it
// runs), then start.
func containerRestart(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	sig, timeout, err := stopParams(r, c)
	if err != nil {
		return err
	}
	e.setManuallyStopped(c, true) // the stop's end is not the policy's to restart
	if err := e.stopContainer(r.Context(), c, sig, timeout); err != nil && err != errNotModified {
		return err
	}
	e.setManuallyStopped(c, false)
	if err := e.startContainer(r.Context(), c); err != nil && err != errNotModified {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// stopSignal is the container's stop signal: the request's, the config's, else SIGTERM.
func stopSignal(r *http.Request, c *ctr) (string, error) {
	s := r.URL.Query().Get("signal")
	if s == "" && c.rec.Config != nil {
		s = c.rec.Config.StopSignal
	}
	if s == "" {
		return "SIGTERM", nil
	}
	if _, err := signal.ParseSignal(s); err != nil {
		return "", invalid("invalid signal: %s", s)
	}
	return s, nil
}

// stopTimeout is ?t=, else the container's StopTimeout, else 10 s; -1 waits forever.
func stopTimeout(r *http.Request, c *ctr) (time.Duration, error) {
	def := 10
	if c.rec.Config != nil && c.rec.Config.StopTimeout != nil {
		def = *c.rec.Config.StopTimeout
	}
	t, err := intParam(r, "t", def)
	if err != nil {
		return 0, err
	}
	if t < 0 {
		return -1, nil
	}
	return time.Duration(t) * time.Second, nil
}
