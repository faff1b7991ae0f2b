package engine

import (
	"net/http"

	"github.com/moby/moby/api/types/container"
)

func init() {
	route("POST /containers/{id}/wait", containerWait)
}

// containerWait is POST /containers/{id}/wait?condition=not-running|next-exit|removed. The
// answer's headers go out at once (the CLI starts the container only once it has them); the
// body, {"StatusCode": N}, when the condition is met. A client that leaves ends the wait.
func containerWait(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	cond := container.WaitCondition(r.URL.Query().Get("condition"))
	switch cond {
	case "":
		cond = container.WaitConditionNotRunning
	case container.WaitConditionNotRunning, container.WaitConditionNextExit, container.WaitConditionRemoved:
	default:
		return invalid("invalid condition: %q (use not-running, next-exit or removed)", cond)
	}
	e.mu.Lock()
	exitsAtCall := c.exits
	e.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	http.NewResponseController(w).Flush()
	for {
		e.mu.Lock()
		var done bool
		switch cond {
		case container.WaitConditionNotRunning:
			done = c.removed || (!c.running() && !c.starting)
		case container.WaitConditionNextExit:
			done = c.removed || c.exits > exitsAtCall
		case container.WaitConditionRemoved:
			done = c.removed
		}
		// No Error: a start that failed was said by the start itself (the CLI would print it
		// twice, and exit 125 instead of the code the start's error maps to).
		resp := container.WaitResponse{StatusCode: int64(c.rec.State.ExitCode)}
		ch := e.changed
		e.mu.Unlock()
		if done {
			writeJSONBody(w, resp)
			return nil
		}
		if waitChange(r.Context(), ch) != nil {
			return nil // the client left: nothing to answer
		}
	}
}
