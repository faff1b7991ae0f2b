package run

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// TraceOptions say how Trace reads a run's request trace (network.jsonl).
type TraceOptions struct {
	Follow bool          // keep reading until the run ends
	Idle   func()        // called when a follow has read all there is for now (flush output)
	Poll   time.Duration // how often a follow looks for more; default 200 ms
}

// Trace calls line with each whole line of run ref's request trace, in order: what is there,
// and with Follow what comes until the run ends.
func (m *Manager) Trace(ctx context.Context, ref string, o TraceOptions, line func([]byte)) error {
	r, err := m.Store.Find(ref)
	if err != nil {
		return err
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	path := filepath.Join(m.Store.Dir(r.ID), "network.jsonl")
	if _, err := os.Stat(path); os.IsNotExist(err) && !o.Follow && r.Spec.Network == "none" {
		return fmt.Errorf("run %s has no network, so no proxy and no requests", ref)
	}
	t := &traceReader{path: path}
	defer t.close()
	for {
		if err := t.read(line); err != nil {
			return fmt.Errorf("reading the trace of run %s: %w", ref, err)
		}
		if !o.Follow {
			return nil
		}
		cur, err := m.Store.Get(r.ID)
		if err != nil {
			return err
		}
		if !cur.Active() {
			// One last read: what the proxy wrote before the run ended, a last partial line too.
			t.partial = true
			return t.read(line)
		}
		if o.Idle != nil {
			o.Idle()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Poll):
		}
	}
}

// traceReader reads whole lines of a file that may not exist yet and may be growing.
type traceReader struct {
	path    string
	f       *os.File
	rd      *bufio.Reader
	partial bool // deliver a last line without its newline
}

func (t *traceReader) read(line func([]byte)) error {
	if t.f == nil {
		f, err := os.Open(t.path)
		if os.IsNotExist(err) {
			return nil // no request yet
		}
		if err != nil {
			return err
		}
		t.f, t.rd = f, bufio.NewReader(f)
	}
	for {
		b, err := t.rd.ReadBytes('\n')
		switch {
		case len(b) > 0 && (b[len(b)-1] == '\n' || t.partial):
			line(b)
		case len(b) > 0:
			// A line still being written: read it whole next time.
			t.f.Seek(-int64(len(b)), io.SeekCurrent)
			t.rd.Reset(t.f)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (t *traceReader) close() {
	if t.f != nil {
		t.f.Close()
	}
}
