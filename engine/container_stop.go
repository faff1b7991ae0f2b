package engine

import (
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/sys/signal"
)

func init() {
	route("POST /containers/{id}/stop", containerStop)
	route("POST /containers/{id}/kill", containerKill)
}

// stopParams reads a stop's or restart's signal and timeout.
func stopParams(r *http.Request, c *ctr) (syscall.Signal, time.Duration, error) {
	name, err := stopSignal(r, c)
	if err != nil {
		return 0, 0, err
	}
	sig, _ := signal.ParseSignal(name)
	timeout, err := stopTimeout(r, c)
	return sig, timeout, err
}

// containerStop is POST /containers/{id}/stop?t=SECONDS&signal=SIG: the stop signal, then
// SIGKILL after t seconds. 204, or 304 when it does not run.
func containerStop(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	sig, timeout, err := stopParams(r, c)
	if err != nil {
		return err
	}
	e.setManuallyStopped(c, true)
	if err := e.stopContainer(r.Context(), c, sig, timeout); err != nil {
		return err
	}
	e.containerEvent(events.ActionStop, e.recOf(c), nil)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// containerKill is POST /containers/{id}/kill?signal=SIG (default SIGKILL): 204, or 409 when
// it does not run.
func containerKill(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	name := r.URL.Query().Get("signal")
	if name == "" {
		name = "SIGKILL"
	}
	sig, err := signal.ParseSignal(name)
	if err != nil || sig == 0 {
		return invalid("invalid signal: %s", name)
	}
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if !running || task == nil {
		return conflict("Container %s is not running", c.rec.ID)
	}
	e.setManuallyStopped(c, true)
	if err := task.Kill(r.Context(), sig); err != nil {
		if errdefs.IsNotFound(err) {
			return conflict("Container %s is not running", c.rec.ID)
		}
		return err
	}
	e.containerEvent(events.ActionKill, e.recOf(c), map[string]string{"signal": strconv.Itoa(int(sig))})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
