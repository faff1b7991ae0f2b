package engine

import (
	"net/http"
	"path/filepath"
	"strconv"

	"github.com/moby/moby/api/types/container"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/run"
)

func init() {
	route("GET /containers/{id}/top", containerTop)
}

// topTitles are the columns of GET /containers/{id}/top: a fixed set, whatever ps_args asks.
var topTitles = []string{"UID", "PID", "PPID", "TIME", "CMD"}

// containerTop is GET /containers/{id}/top: the container's processes (run.TaskProcesses,
// as moatc top). Under gVisor the pids are the sandbox's own. 409 when it does not run.
func containerTop(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if !running || task == nil {
		return conflict("container %s is not running", c.rec.ID)
	}
	runsc, root := "", ""
	if g, ok := e.cfg.Runtime.(ctrd.GVisor); ok {
		runsc, root = g.RunscPath(), filepath.Join(g.StateRoot(), e.cfg.Client.Namespace)
	}
	procs, err := run.TaskProcesses(r.Context(), task, runsc, root)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, topResponse(procs))
}

// topResponse lays processes out as Docker's table.
func topResponse(procs []run.Process) container.TopResponse {
	resp := container.TopResponse{Titles: topTitles, Processes: [][]string{}}
	for _, p := range procs {
		uid := strconv.Itoa(p.UID)
		if p.UID < 0 {
			uid = "?"
		}
		resp.Processes = append(resp.Processes, []string{uid, strconv.Itoa(p.PID), strconv.Itoa(p.PPID), p.Time, p.Cmd})
	}
	return resp
}
