package engine

import (
	"context"
	"io"
	"net/http"
	"time"

	"github.com/moatc/moatc/run"
)

func init() {
	route("POST /containers/{id}/attach", containerAttach)
}

// containerAttach is POST /containers/{id}/attach?stream=1&stdin=1&stdout=1&stderr=1&logs=1,
// hijacked: the container's output (raw with a TTY, framed otherwise) until the run in
// progress, or the next one, ends; the client's bytes go to the container's stdin when it has
// one (OpenStdin). The output comes from the container's log as it is written, so attaching
// never holds up the workload.
func containerAttach(e *Engine, w http.ResponseWriter, r *http.Request) error {
	c, err := e.lookup(r.PathValue("id"))
	if err != nil {
		return err
	}
	stream, logs := boolParam(r, "stream"), boolParam(r, "logs")
	stdin, stdout, stderr := boolParam(r, "stdin"), boolParam(r, "stdout"), boolParam(r, "stderr")
	if !stdin && !stdout && !stderr {
		return invalid("Bad parameters: you must choose at least one stream")
	}
	// detachKeys is accepted but not applied: a client detaches by closing its connection.
	tty := c.rec.Config.Tty
	e.mu.Lock()
	// The run the client sees the end of: the one in progress, or the next.
	target := c.exits + 1
	var stdinW *io.PipeWriter
	if stdin && c.rec.Config.OpenStdin {
		if c.stdin == nil && !c.running() && !c.starting {
			c.stdinR, c.stdin = io.Pipe() // the next task takes the other end
		}
		stdinW = c.stdin
	}
	e.mu.Unlock()

	conn, br, err := hijack(w, r, streamType(tty))
	if err != nil {
		return nil // nothing can be answered on a connection half taken over
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(e.bg)
	defer cancel()
	// What the client sent: what the server had read ahead, then the connection itself.
	in := io.MultiReader(io.LimitReader(br, int64(br.Buffered())), conn)
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		var err error
		if stdinW == nil {
			_, err = io.Copy(io.Discard, in)
		} else {
			_, err = io.Copy(stdinW, in)
			if c.rec.Config.StdinOnce {
				e.mu.Lock()
				if c.stdin == stdinW {
					c.stdin.Close()
					c.stdin, c.stdinR = nil, nil
				}
				e.mu.Unlock()
			}
		}
		if err != nil && err != io.ErrClosedPipe {
			cancel() // the connection broke
			return
		}
		// The client has stopped sending; it may still read, or be gone.
		watchHangup(ctx, conn, cancel)
	}()
	out, errw := streamWriters(conn, tty, stdout, stderr)
	ended := func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return c.removed || c.exits >= target
	}
	o := run.ReadOptions{Follow: stream, New: !logs}
	if !stream && !logs {
		o.New = true
	}
	e.log(c).Read(ctx, o, out, errw, ended)
	closeWrite(conn)
	// The client closes its end once it has read everything; one that does not is let go
	// after a moment.
	conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	select {
	case <-readerDone:
	case <-time.After(3 * time.Second): // stuck writing to a stdin nobody reads
	}
	return nil
}
