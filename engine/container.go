package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/container"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/run"
)

// record is what the engine keeps of a container besides containerd: Docker's view of it.
// It is written (container.json in the container's directory) at every change of state.
type record struct {
	ID      string
	Name    string // without Docker's leading "/"
	Created time.Time
	// Image is the image's full name (docker.io/library/busybox:latest), ImageID its digest.
	Image   string
	ImageID string
	// Path and Args are the command; Config is the request's, completed from the image as
	// Docker does (Cmd, Env, WorkingDir, Labels...).
	Path       string
	Args       []string
	Config     *container.Config
	HostConfig *container.HostConfig
	State      state
}

// state is a container's state as Docker shows it.
type state struct {
	Status     container.ContainerState
	Pid        int
	ExitCode   int
	Error      string
	StartedAt  time.Time
	FinishedAt time.Time
	// RestartCount counts the restarts of its restart policy; ManuallyStopped is a stop or
	// kill through the API, which the policy does not undo.
	RestartCount    int  `json:",omitempty"`
	ManuallyStopped bool `json:",omitempty"`
	// Health is the health check's state while it runs (health.go); nil without one.
	Health *container.Health `json:",omitempty"`
}

// ctr is a container the engine knows: its record and what is going on with it now. Fields
// other than rec's identity are read and written under Engine.mu.
type ctr struct {
	rec record
	dir string

	// starts and exits count the runs begun and the runs ended (their output complete)
	// since the engine started: a run is in progress while exits < starts.
	starts, exits int
	starting      bool
	restartStreak int // restarts by its policy in a row (restart_policy.go)
	// copying counts the copies from or into the stopped container's mounted rootfs: no
	// start while one goes on (the workload could change the tree under the engine's walk).
	copying   int
	removing  bool
	removed   bool
	task      containerd.Task
	watchDone chan struct{} // closed when the run's watcher is done with it
	// stdin is the writer end of the running (or next) task's stdin, for containers with
	// OpenStdin; stdinR is its reader end, which the next task takes.
	stdin  *io.PipeWriter
	stdinR *io.PipeReader
}

func (c *ctr) running() bool { return c.rec.State.Status == container.StateRunning }

// log is the container's output log.
func (e *Engine) log(c *ctr) run.ContainerLog {
	return run.ContainerLog{Path: filepath.Join(c.dir, "output.log"), Max: e.cfg.LogMax}
}

func (e *Engine) containerDir(id string) string {
	return filepath.Join(e.cfg.StateDir, "containers", id)
}

// save writes c's record. Call with e.mu held (or before c is shared).
func (e *Engine) save(c *ctr) error {
	b, err := json.Marshal(c.rec)
	if err != nil {
		return fmt.Errorf("saving container %s: %w", c.rec.ID, err)
	}
	// Not synced: after a crash the state is read again from containerd.
	return atomicfile.WriteNoSync(filepath.Join(c.dir, "container.json"), b, 0o600)
}

// load reads the containers of an engine before this one, checks them against containerd,
// and follows those still running.
func (e *Engine) load(ctx context.Context) error {
	dirs, err := os.ReadDir(filepath.Join(e.cfg.StateDir, "containers"))
	if err != nil {
		return fmt.Errorf("reading the engine's containers: %w", err)
	}
	known := map[string]bool{}
	for _, d := range dirs {
		dir := e.containerDir(d.Name())
		b, err := os.ReadFile(filepath.Join(dir, "container.json"))
		var rec record
		if err == nil {
			err = json.Unmarshal(b, &rec)
		}
		if err != nil || rec.ID != d.Name() {
			// A create that died half-way: no container was made for it (the record comes first).
			os.RemoveAll(dir)
			continue
		}
		cc, err := e.cfg.Client.LoadContainer(ctx, rec.ID)
		if errdefs.IsNotFound(err) {
			os.RemoveAll(dir) // a remove that died half-way
			continue
		}
		if err != nil {
			return fmt.Errorf("loading container %s: %w", rec.ID, err)
		}
		known[rec.ID] = true
		c := &ctr{rec: rec, dir: dir}
		e.ctrs[rec.ID] = c
		e.adopt(ctx, c, cc)
		if c.rec.State.Status == container.StateExited && c.rec.HostConfig != nil && c.rec.HostConfig.AutoRemove {
			// It ended while no engine was there to remove it.
			if _, err := e.cfg.Client.RemoveContainer(ctx, rec.ID); err == nil {
				os.RemoveAll(dir)
				delete(e.ctrs, rec.ID)
			}
		}
	}
	// Containers of this engine's run without a record: a create that died between the two.
	// Only this run's: docker:host runs share the namespace, and the others' are theirs.
	owned, err := e.cfg.Client.Containers(ctx, fmt.Sprintf("labels.%q==%s,labels.%q==%s", ctrd.LabelRole, Role, ctrd.LabelRunID, e.cfg.RunID))
	if err != nil {
		return fmt.Errorf("listing the engine's containers: %w", err)
	}
	for _, cc := range owned {
		if !known[cc.ID()] {
			e.cfg.Client.RemoveContainer(ctx, cc.ID())
		}
	}
	return nil
}

// adopt takes over a container from an engine before this one: a running task is followed
// to its end (its output too, when the shim's logger records it; a task whose IO that engine
// held gets a new recorder here, without stdin); a record that says running with no task
// left gets an unknown end.
func (e *Engine) adopt(ctx context.Context, c *ctr, cc containerd.Container) {
	var rec *run.LogRecorder
	attach := cio.Load
	if c.rec.Config != nil && engineIO(c.rec.Config) {
		if r, err := e.log(c).Record(); err == nil {
			rec = r
			out := "stdout"
			if c.rec.Config.Tty {
				out = "tty"
			}
			attach = cio.NewAttach(cio.WithStreams(nil, r.Stream(out), r.Stream("stderr")))
		}
	}
	task, err := cc.Task(ctx, attach)
	if err != nil {
		if rec != nil {
			rec.Close()
		}
		if c.running() {
			c.rec.State = state{Status: container.StateExited, ExitCode: 255, StartedAt: c.rec.State.StartedAt, FinishedAt: time.Now().UTC(),
				Error: "the engine lost track of the container's end"}
			e.save(c)
		}
		return
	}
	st, err := task.Status(ctx)
	if err == nil && st.Status == containerd.Created {
		// A start that died before the task ran: it never ran.
		task.Delete(ctx, containerd.WithProcessKill)
		if rec != nil {
			rec.Close()
		}
		return
	}
	statusC, err := task.Wait(e.bg)
	if err != nil {
		if rec != nil {
			rec.Close()
		}
		return
	}
	c.starts = 1
	c.task = task
	c.rec.State.Status = container.StateRunning
	c.rec.State.Pid = int(task.Pid())
	e.save(c)
	c.watchDone = make(chan struct{})
	e.workers.Add(1)
	go e.watch(c, task, statusC, rec)
}

// lookup finds a container as Docker does: by full id, by name (with or without its "/"),
// then by a unique id prefix.
func (e *Engine) lookup(ref string) (*ctr, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.ctrs[ref]; ok && !c.removed {
		return c, nil
	}
	name := strings.TrimPrefix(ref, "/")
	for _, c := range e.ctrs {
		if c.rec.Name == name && !c.removed {
			return c, nil
		}
	}
	var found *ctr
	if ref != "" && validIDPrefix.MatchString(ref) {
		for id, c := range e.ctrs {
			if strings.HasPrefix(id, ref) && !c.removed {
				if found != nil {
					return nil, invalid("multiple containers found with provided prefix: %s", ref)
				}
				found = c
			}
		}
	}
	if found == nil {
		return nil, notFound("No such container: %s", ref)
	}
	return found, nil
}

var validIDPrefix = regexp.MustCompile(`^[a-f0-9]{1,64}$`)

// snapshot returns copies of every container's record, newest first.
func (e *Engine) snapshot() []record {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]record, 0, len(e.ctrs))
	for _, c := range e.ctrs {
		if !c.removed {
			out = append(out, c.rec)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.After(out[j].Created) })
	return out
}

// newID is a container id as Docker makes them: 64 hex digits, not all of them digits (a
// short id of digits only would read as a number).
func newID() string {
	for {
		b := make([]byte, 32)
		rand.Read(b)
		id := hex.EncodeToString(b)
		if strings.ContainsAny(id[:12], "abcdef") {
			return id
		}
	}
}

// recOf is a copy of c's record, taken under the engine's lock (rename, the watcher and
// starts change it while requests read it).
func (e *Engine) recOf(c *ctr) record {
	e.mu.Lock()
	defer e.mu.Unlock()
	return c.rec
}
