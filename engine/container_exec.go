package engine

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"

	"github.com/moatc/moatc/run"
)

func init() {
	route("POST /containers/{id}/exec", execCreate)
	route("POST /exec/{id}/start", execStart)
	route("GET /exec/{id}/json", execInspect)
	route("POST /exec/{id}/resize", execResize)
}

// execsKept bounds the ended execs kept for inspection: Docker keeps them until the container
// goes; a workload that execs in a loop must not grow the engine without end.
const execsKept = 256

// execsPending bounds the execs created and not started yet: a workload that creates them in
// a loop must not grow the engine without end either.
const execsPending = 1024

// execTable holds the execs made through the engine, by id.
type execTable struct {
	mu    sync.Mutex
	all   map[string]*execInst
	ended []string // ids of ended execs, oldest first
}

// execInst is one exec: its request, then its process and end. Fields after cfg are
// under execTable.mu.
type execInst struct {
	id  string
	c   *ctr
	cfg container.ExecCreateRequest

	started  bool
	running  bool
	exitCode *int
	pid      int
	proc     containerd.Process
	size     [2]uint // a resize before the process exists: applied at its start
}

func (t *execTable) get(id string) (*execInst, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	x, ok := t.all[id]
	if !ok {
		return nil, notFound("No such exec instance: %s", id)
	}
	return x, nil
}

// execCreate is POST /containers/{id}/exec: 201 with the exec's id; 409 when the container
// does not run; 403 for Privileged, refused as create refuses --privileged.
func execCreate(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	var req container.ExecCreateRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		return err
	}
	if len(req.Cmd) == 0 {
		return invalid("No exec command specified")
	}
	if req.Privileged {
		return forbidden("moatc refuses exec --privileged: containers started through its engine get no more access to the host than the run itself")
	}
	if req.WorkingDir != "" && !strings.HasPrefix(req.WorkingDir, "/") {
		return invalid("the working directory '%s' is invalid, it needs to be an absolute path", req.WorkingDir)
	}
	e.mu.Lock()
	running := c.running() && c.task != nil
	e.mu.Unlock()
	if !running {
		return conflict("container %s is not running", c.rec.ID)
	}
	x := &execInst{id: newID(), c: c, cfg: req}
	e.execs.mu.Lock()
	if e.execs.all == nil {
		e.execs.all = map[string]*execInst{}
	}
	pending := 0
	for _, o := range e.execs.all {
		if !o.started {
			pending++
		}
	}
	if pending >= execsPending {
		e.execs.mu.Unlock()
		return conflict("the engine holds %d execs created and not started (moatc's limit): start them, or remove their containers", pending)
	}
	e.execs.all[x.id] = x
	e.execs.mu.Unlock()
	e.containerEvent(execAction(events.ActionExecCreate, req.Cmd), e.recOf(c), map[string]string{"execID": x.id})
	return writeJSON(w, http.StatusCreated, container.ExecCreateResponse{ID: x.id})
}

// execAction is Docker's exec event action: "exec_create: CMD ARGS".
func execAction(a events.Action, cmd []string) events.Action {
	return events.Action(string(a) + ": " + strings.Join(cmd, " "))
}

// execStart is POST /exec/{id}/start: hijacked as attach is (101 to a client asking to
// upgrade; raw with a TTY, framed without), the client's bytes to the command's stdin, until
// the command ends. Detach runs it in the background and answers 200 at once.
func execStart(e *Engine, w http.ResponseWriter, r *http.Request) error {
	x, err := e.execs.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	var req container.ExecStartRequest
	if err := decodeJSON(w, r, &req, true); err != nil {
		return err
	}
	e.execs.mu.Lock()
	if x.started {
		e.execs.mu.Unlock()
		return conflict("Error: Exec command %s has already run", x.id)
	}
	x.started = true
	if req.ConsoleSize != nil {
		x.size = *req.ConsoleSize
	} else if x.cfg.ConsoleSize != nil {
		x.size = *x.cfg.ConsoleSize
	}
	e.execs.mu.Unlock()
	c := x.c
	e.mu.Lock()
	task, running := c.task, c.running()
	e.mu.Unlock()
	if !running || task == nil {
		e.execEnded(x, 126)
		return conflict("container %s is not running", c.rec.ID)
	}
	if req.Detach {
		go e.runExec(context.WithoutCancel(e.bg), x, task, nil, io.Discard, io.Discard)
		w.WriteHeader(http.StatusOK)
		return nil
	}
	tty := x.cfg.Tty
	conn, br, err := hijack(w, r, streamType(tty))
	if err != nil {
		return nil // nothing can be answered on a connection half taken over
	}
	defer conn.Close()
	out, errw := streamWriters(conn, tty, x.cfg.AttachStdout, x.cfg.AttachStderr)
	// A client gone must not hold up the command: its output is dropped from then on.
	out, errw = &lossyWriter{w: out}, &lossyWriter{w: errw}
	var stdin io.Reader
	in := io.MultiReader(io.LimitReader(br, int64(br.Buffered())), conn)
	if x.cfg.AttachStdin {
		stdin = in
	} else {
		go io.Copy(io.Discard, in)
	}
	// As Docker's, the command runs to its end when the client leaves.
	e.runExec(e.bg, x, task, stdin, out, errw)
	closeWrite(conn)
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	return nil
}

// runExec runs x in the container's task until it ends (or ctx does: it is killed then) and
// records its exit code before returning, so the client's inspect after the stream sees it.
func (e *Engine) runExec(ctx context.Context, x *execInst, task containerd.Task, stdin io.Reader, out, errw io.Writer) {
	bg := context.WithoutCancel(ctx)
	c := x.c
	cc, err := e.cfg.Client.LoadContainer(bg, c.rec.ID)
	var o run.ExecOptions
	if err == nil {
		o = run.ExecOptions{Args: x.cfg.Cmd, Env: x.cfg.Env, Workdir: x.cfg.WorkingDir, User: x.cfg.User, TTY: x.cfg.Tty}
		code, err := e.execProcess(ctx, cc, task, x, o, stdin, out, errw)
		if err == nil {
			e.execEnded(x, code)
			return
		}
		code = execFailCode(err)
		fmt.Fprintf(errw, "OCI runtime exec failed: %v\r\n", err)
		e.execEnded(x, code)
		return
	}
	fmt.Fprintf(errw, "exec failed: %v\n", err)
	e.execEnded(x, 126)
}

// execProcess runs one exec process with its streams; x (when given) gets its pid and
// process while it runs, and the exec events are emitted.
func (e *Engine) execProcess(ctx context.Context, cc containerd.Container, task containerd.Task, x *execInst, o run.ExecOptions, stdin io.Reader, out, errw io.Writer) (int, error) {
	bg := context.WithoutCancel(ctx)
	pspec, err := run.ExecProcessSpec(bg, e.cfg.Client.Client, cc, o)
	if err != nil {
		return 0, err
	}
	var proc containerd.Process
	// At stdin's end the shim must be told to close the command's stdin; it can only once the
	// process has started (before, the shim has no stdin of it to close).
	started := make(chan struct{})
	var startedOK bool
	var startOnce sync.Once
	markStarted := func(ok bool) { startOnce.Do(func() { startedOK = ok; close(started) }) }
	defer markStarted(false)
	if stdin != nil {
		stdin = &stdinEOF{r: stdin, atEOF: func() {
			<-started
			if startedOK {
				proc.CloseIO(bg, containerd.WithStdinCloser)
			}
		}}
	}
	opts := []cio.Opt{cio.WithStreams(stdin, out, errw)}
	if o.TTY {
		opts = append(opts, cio.WithTerminal)
	}
	procID := "exec-" + newID()[:16]
	if x != nil {
		procID = x.id
	}
	proc, err = task.Exec(bg, procID, pspec, cio.NewCreator(opts...))
	if err != nil {
		return 0, err
	}
	defer proc.Delete(bg, containerd.WithProcessKill)
	statusC, err := proc.Wait(bg)
	if err != nil {
		return 0, err
	}
	if x != nil {
		e.execs.mu.Lock()
		if h, w := x.size[0], x.size[1]; o.TTY && h > 0 && w > 0 {
			proc.Resize(bg, uint32(w), uint32(h))
		}
		e.execs.mu.Unlock()
	}
	if err := proc.Start(bg); err != nil {
		return 0, err
	}
	markStarted(true)
	if x != nil {
		e.execs.mu.Lock()
		x.proc, x.running, x.pid = proc, true, int(proc.Pid())
		e.execs.mu.Unlock()
		e.containerEvent(execAction(events.ActionExecStart, o.Args), e.recOf(x.c), map[string]string{"execID": x.id})
	}
	var st containerd.ExitStatus
	select {
	case st = <-statusC:
	case <-ctx.Done():
		proc.Kill(bg, 9)
		st = <-statusC
	}
	// The output is copied until the shim closes it.
	proc.IO().Wait()
	code, _, err := st.Result()
	if err != nil {
		return 0, err
	}
	return int(code), nil
}

// execFailCode is the exit code of an exec that could not start, as Docker's: 127 for a
// command not found, 126 otherwise.
func execFailCode(err error) int {
	msg := err.Error()
	if strings.Contains(msg, "chdir") || strings.Contains(msg, "cwd") {
		return 126
	}
	if strings.Contains(msg, "executable file not found") || strings.Contains(msg, "no such file or directory") ||
		strings.Contains(msg, "error finding executable") {
		return 127
	}
	return 126
}

// execEnded records x's end and emits exec_die.
func (e *Engine) execEnded(x *execInst, code int) {
	e.execs.mu.Lock()
	x.running, x.proc = false, nil
	x.exitCode = &code
	t := &e.execs
	t.ended = append(t.ended, x.id)
	if len(t.ended) > execsKept {
		for _, id := range t.ended[:len(t.ended)-execsKept] {
			delete(t.all, id)
		}
		t.ended = append(t.ended[:0], t.ended[len(t.ended)-execsKept:]...)
	}
	e.execs.mu.Unlock()
	e.containerEvent(events.ActionExecDie, e.recOf(x.c), map[string]string{"execID": x.id, "exitCode": strconv.Itoa(code)})
}

// execInspect is GET /exec/{id}/json.
func execInspect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	x, err := e.execs.get(r.PathValue("id"))
	if err != nil {
		return err
	}
	e.execs.mu.Lock()
	resp := container.ExecInspectResponse{
		ID: x.id, Running: x.running, Pid: x.pid, ContainerID: x.c.rec.ID,
		OpenStdin: x.cfg.AttachStdin, OpenStdout: x.cfg.AttachStdout, OpenStderr: x.cfg.AttachStderr,
		CanRemove:  x.exitCode != nil,
		DetachKeys: []byte{},
		ProcessConfig: &container.ExecProcessConfig{Tty: x.cfg.Tty, Entrypoint: x.cfg.Cmd[0],
			Arguments: append([]string{}, x.cfg.Cmd[1:]...), User: x.cfg.User, Privileged: new(bool)},
	}
	if x.exitCode != nil {
		code := *x.exitCode
		resp.ExitCode = &code
	}
	e.execs.mu.Unlock()
	return writeJSON(w, http.StatusOK, resp)
}

// execResize is POST /exec/{id}/resize?h=&w=: the exec's TTY size (kept for its start when
// it has not started yet, as the CLI may resize first).
func execResize(e *Engine, w http.ResponseWriter, r *http.Request) error {
	x, err := e.execs.get(r.PathValue("id"))
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
	e.execs.mu.Lock()
	proc, ended := x.proc, x.exitCode != nil
	x.size = [2]uint{uint(h), uint(wd)}
	e.execs.mu.Unlock()
	if ended {
		return conflict("exec %s is not running", x.id)
	}
	if proc != nil && x.cfg.Tty && h > 0 && wd > 0 {
		if err := proc.Resize(r.Context(), uint32(wd), uint32(h)); err != nil {
			return err
		}
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// lossyWriter passes writes on until one fails, then drops the rest: a client gone does not
// stop the command's output from being drained.
type lossyWriter struct {
	w    io.Writer
	mu   sync.Mutex
	dead bool
}

func (l *lossyWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.dead {
		if _, err := l.w.Write(p); err != nil {
			l.dead = true
		}
	}
	return len(p), nil
}

// forget drops the execs of container c, which is gone: Docker's go with their container.
func (t *execTable) forget(c *ctr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, x := range t.all {
		if x.c == c {
			delete(t.all, id)
		}
	}
	t.ended = slices.DeleteFunc(t.ended, func(id string) bool { _, ok := t.all[id]; return !ok })
}
