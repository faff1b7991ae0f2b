package run

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"

	"github.com/moatc/moatc/state"
)

// LogOptions select what Logs prints.
type LogOptions struct {
	Follow     bool // keep printing until the run ends
	Tail       int  // only the last N lines; 0 is all
	Timestamps bool
}

// Logs prints a run's recorded output: stdout lines to out, stderr lines to errw, so the two
// stay separate. Where output was dropped to keep the log under its cap, a "moatc: output
// dropped" line goes to errw.
func (m *Manager) Logs(ctx context.Context, ref string, o LogOptions, out, errw io.Writer) error {
	r, err := m.Store.Find(ref)
	if err != nil {
		return err
	}
	path := m.Store.LogPath(r.ID)
	var lr *logReader
	for {
		lr, err = openLog(path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// A detached run that has not started yet has no log: wait for one while it may come.
		if cur, gerr := m.Store.Get(r.ID); !o.Follow || gerr != nil || !cur.Active() {
			return nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	defer lr.Close()
	print := func(l Line) {
		if l.Stream == markStream {
			io.WriteString(errw, "moatc: "+l.Text+"\n")
			return
		}
		w := out
		if l.Stream == "stderr" {
			w = errw
		}
		if o.Timestamps {
			io.WriteString(w, l.Time.Format(time.RFC3339Nano)+" ")
		}
		io.WriteString(w, l.Text)
		if !l.Partial {
			io.WriteString(w, "\n")
		}
	}
	if o.Tail > 0 {
		// Marks do not count as lines; those right before the first line shown are kept.
		var ring []Line
		n := 0
		for {
			l, err := lr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if l.Stream != markStream {
				if n == o.Tail {
					for ring[0].Stream == markStream {
						ring = ring[1:]
					}
					ring = ring[1:]
				} else {
					n++
				}
			}
			ring = append(ring, l)
		}
		for _, l := range ring {
			print(l)
		}
	}
	for {
		l, err := lr.next()
		if err == nil {
			print(l)
			continue
		}
		if err != io.EOF {
			return err
		}
		if !o.Follow {
			return nil
		}
		cur, gerr := m.Store.Get(r.ID)
		if gerr != nil {
			return gerr
		}
		if !cur.Active() {
			// The record is final only after the log was flushed: drain what is left.
			for {
				l, err := lr.next()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				print(l)
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// logReader reads a run's log across rotations: log.1.jsonl, then log.jsonl, then each file
// that replaces it while it reads. It relies on the recorder's order: a file is renamed to
// log.1.jsonl only after its last write, and log.1.jsonl only ever holds a newer file.
type logReader struct {
	path, oldPath string
	f             *os.File
	fi            os.FileInfo // f's, to tell when log.jsonl is another file
	rd            *bufio.Reader
	queued        *os.File // log.jsonl, while f is the log.1.jsonl before it
	rotated       bool     // f is no longer log.jsonl: read to its end, then move on
	pos           count    // output read, or known dropped, so far
	partial       []byte   // the start of a line not yet ended
}

func openLog(path string) (*logReader, error) {
	lr := &logReader{path: path, oldPath: rotatedPath(path), rd: bufio.NewReaderSize(nil, 64<<10)}
	old, cur, err := lr.openPair()
	if err != nil {
		return nil, err
	}
	lr.start(old, cur)
	return lr, nil
}

// openPair opens log.1.jsonl (nil when there is none) and log.jsonl as they were at one
// moment, so the first comes right before the second.
func (lr *logReader) openPair() (old, cur *os.File, err error) {
	for tries := 0; ; tries++ {
		cur, err = os.Open(lr.path)
		if errors.Is(err, os.ErrNotExist) && tries < 100 {
			if _, serr := os.Stat(lr.oldPath); serr == nil {
				// Between a rotation's rename and its new file.
				time.Sleep(10 * time.Millisecond)
				continue
			}
		}
		if err != nil {
			return nil, nil, err
		}
		old, err = os.Open(lr.oldPath)
		if errors.Is(err, os.ErrNotExist) {
			old, err = nil, nil
		}
		if err != nil {
			cur.Close()
			return nil, nil, err
		}
		// Still log.jsonl after old was opened: no rotation came between the two opens.
		fi, ferr := cur.Stat()
		pi, perr := os.Stat(lr.path)
		if ferr == nil && perr == nil && os.SameFile(fi, pi) {
			return old, cur, nil
		}
		cur.Close()
		if old != nil {
			old.Close()
		}
		if ferr != nil {
			return nil, nil, ferr
		}
	}
}

// start reads old, if any, then cur.
func (lr *logReader) start(old, cur *os.File) {
	if old == nil {
		lr.use(cur)
		return
	}
	lr.use(old)
	lr.queued = cur
}

func (lr *logReader) use(f *os.File) {
	if lr.f != nil {
		lr.f.Close()
	}
	lr.f, lr.rotated = f, false
	lr.fi, _ = f.Stat()
	lr.rd.Reset(f)
	lr.partial = nil // the end of the file before was torn: it never completes
}

// next returns the next line of output, or a moatc line for output that was dropped before
// it. io.EOF means there is nothing more for now.
func (lr *logReader) next() (Line, error) {
	for {
		l, err := lr.readLine()
		if err == nil {
			if l.Mark == nil {
				if l.Stream != markStream {
					lr.pos.add(l)
				}
				return l, nil
			}
			gap := count{l.Mark.Bytes, l.Mark.Lines}
			gap.sub(lr.pos)
			if gap.bytes < 0 {
				gap = count{}
			}
			lr.pos = count{l.Mark.Bytes, l.Mark.Lines}
			if gap.bytes > 0 {
				return Line{Time: l.Time, Stream: markStream, Text: droppedText(l.Mark.Cap, gap)}, nil
			}
			continue
		}
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		if errors.As(err, &se) || errors.As(err, &te) {
			continue // a damaged line
		}
		if err != io.EOF {
			return Line{}, err
		}
		if lr.queued != nil {
			lr.use(lr.queued)
			lr.queued = nil
			continue
		}
		if !lr.rotated {
			pi, err := os.Stat(lr.path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return Line{}, err
			}
			if err == nil && os.SameFile(lr.fi, pi) {
				return Line{}, io.EOF
			}
			// Renamed after its last write: read what is left, then move on.
			lr.rotated = true
			continue
		}
		old, cur, err := lr.openPair()
		if errors.Is(err, os.ErrNotExist) {
			return Line{}, io.EOF // the new file is not there yet, or the run was removed
		}
		if err != nil {
			return Line{}, err
		}
		if old != nil {
			if fi, err := old.Stat(); err != nil || os.SameFile(fi, lr.fi) {
				old.Close()
				old = nil
			}
		}
		lr.start(old, cur)
	}
}

func (lr *logReader) Close() error {
	if lr.queued != nil {
		lr.queued.Close()
	}
	return lr.f.Close()
}

// readLine reads one complete JSON line. A line not yet ended (being written, or torn by a
// crash or a full disk) is kept and completed by a later call: io.EOF until then, so neither
// logs nor logs -f stalls on it.
func (lr *logReader) readLine() (Line, error) {
	var l Line
	b, err := lr.rd.ReadBytes('\n')
	if len(lr.partial) > 0 {
		b = append(lr.partial, b...)
		lr.partial = nil
	}
	if err == io.EOF && len(b) > 0 {
		lr.partial = b
		return l, io.EOF
	}
	if err != nil {
		return l, err
	}
	return l, json.Unmarshal(b, &l)
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Get resolves a run reference.
func (m *Manager) Get(ref string) (*state.Run, error) { return m.Store.Find(ref) }
