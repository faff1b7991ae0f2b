package engine

import (
	"net/http"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/storage"
)

func init() {
	route("GET /containers/{id}/json", containerInspect)
}

// containerInspect is GET /containers/{id}/json.
func containerInspect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	e.mu.Lock()
	rec, dir := c.rec, c.dir
	e.mu.Unlock()
	return writeJSON(w, http.StatusOK, e.inspect(rec, dir))
}

// dockerTime formats a time as Docker does; the zero time is 0001-01-01T00:00:00Z.
func dockerTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}

func (e *Engine) inspect(rec record, dir string) container.InspectResponse {
	st := rec.State
	return container.InspectResponse{
		ID:      rec.ID,
		Created: dockerTime(rec.Created),
		Path:    rec.Path,
		Args:    nonNil(rec.Args),
		State: &container.State{
			Status:     st.Status,
			Running:    st.Status == container.StateRunning,
			Dead:       st.Status == container.StateDead,
			Pid:        st.Pid,
			ExitCode:   st.ExitCode,
			Error:      st.Error,
			StartedAt:  dockerTime(st.StartedAt),
			FinishedAt: dockerTime(st.FinishedAt),
			Health:     st.Health,
		},
		Image:        rec.ImageID,
		RestartCount: st.RestartCount,
		LogPath:      e.log(&ctr{dir: dir}).Path,
		Name:         "/" + rec.Name,
		Driver:       e.cfg.Snapshotter,
		Platform:     "linux",
		HostConfig:   rec.HostConfig,
		GraphDriver:  &storage.DriverData{Name: e.cfg.Snapshotter, Data: map[string]string{}},
		Mounts:       e.mountPoints(dir),
		Config:       rec.Config,
		NetworkSettings: &container.NetworkSettings{
			Ports:    e.portMap(rec),
			Networks: e.containerNetworks(rec),
		},
	}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
