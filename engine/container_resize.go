package engine

import (
	"net/http"
)

func init() {
	route("POST /containers/{id}/resize", containerResize)
}

// containerResize is POST /containers/{id}/resize?h=ROWS&w=COLUMNS: the TTY's size. Without
// a TTY there is nothing to size, and it answers 200 as Docker does; 409 when it does not run.
func containerResize(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	h, err := intParam(r, "h", 0)
	if err != nil {
		return err
	}
	wd, err := intParam(r, "w", 0)
	if err != nil {
		return err
	}
	if h < 0 || wd < 0 || h > 65535 || wd > 65535 {
		return invalid("invalid TTY size %dx%d", h, wd)
	}
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if !running || task == nil {
		return conflict("Container %s is not running", c.rec.ID)
	}
	if c.rec.Config.Tty && h > 0 && wd > 0 {
		if err := task.Resize(r.Context(), uint32(wd), uint32(h)); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusOK)
	return nil
}
