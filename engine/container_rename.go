package engine

import (
	"net/http"
	"strings"

	"github.com/moby/moby/api/types/events"
)

func init() {
	route("POST /containers/{id}/rename", containerRename)
}

// containerRename is POST /containers/{id}/rename?name=: 204; 409 when the name is taken,
// 400 when it is not a valid name. The containerd container's name label follows.
func containerRename(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	name := strings.TrimPrefix(r.URL.Query().Get("name"), "/")
	if name == "" || !validName.MatchString(name) {
		return invalid("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	// createMu: a create racing for the same name sees one or the other.
	e.createMu.Lock()
	defer e.createMu.Unlock()
	if other, err := e.lookupName(name); err == nil {
		if other == c {
			return invalid("Renaming a container with the same name as its current name")
		}
		return conflict("Conflict. The container name \"/%s\" is already in use by container \"%s\". You have to remove (or rename) that container to be able to reuse that name.", name, other.rec.ID)
	}
	cc, err := e.cfg.Client.LoadContainer(r.Context(), c.rec.ID)
	if err != nil {
		return err
	}
	if _, err := cc.SetLabels(r.Context(), map[string]string{LabelName: name}); err != nil {
		return err
	}
	e.mu.Lock()
	old := c.rec.Name
	c.rec.Name = name
	serr := e.save(c)
	rec := c.rec
	e.mu.Unlock()
	if serr != nil {
		return serr
	}
	e.containerEvent(events.ActionRename, rec, map[string]string{"oldName": "/" + old})
	w.WriteHeader(http.StatusNoContent)
	return nil
}
