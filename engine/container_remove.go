package engine

import (
	"net/http"
)

func init() {
	route("DELETE /containers/{id}", containerRemove)
}

// containerRemove is DELETE /containers/{id}?force=1&v=1: 204; 409 when it runs without
// force. Volumes (v) are not there yet to remove.
func containerRemove(e *Engine, w http.ResponseWriter, r *http.Request) error {
	if boolParam(r, "link") {
		return notImplemented("moatc does not support links")
	}
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	if err := e.removeContainer(r.Context(), c, boolParam(r, "force")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
