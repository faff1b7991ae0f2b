package engine

import (
	"context"
	"net/http"
)

func init() {
	route("DELETE /containers/{id}", containerRemove)
}

// containerRemove is DELETE /containers/{id}?force=1&v=1: 204; 409 when it runs without
// force. v removes the container's anonymous volumes with it.
func containerRemove(e *Engine, w http.ResponseWriter, r *http.Request) error {
	if boolParam(r, "link") {
		return notImplemented("moatc does not support links")
	}
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := e.removeWithVolumes(r.Context(), c, boolParam(r, "force"), boolParam(r, "v")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// removeWithVolumes removes c, then, with volumes, its anonymous volumes (rm -v, --rm).
func (e *Engine) removeWithVolumes(ctx context.Context, c *ctr, force, volumes bool) error {
	ms, _ := readMounts(c.dir)
	if err := e.removeContainer(ctx, c, force); err != nil {
		return err
	}
	if volumes {
		e.removeAnonymousVolumes(ms)
	}
	return nil
}
