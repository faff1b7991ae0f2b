package run

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/moatc/moatc/state"
)

// LogOptions select what Logs prints.
type LogOptions struct {
	Follow     bool // keep printing until the run ends
	Tail       int  // only the last N lines; 0 is all
	Timestamps bool
	New        bool      // only what is written from now on (attach)
	Since      time.Time // records written before it are left out; zero is no bound
	Until      time.Time // records written after it are left out; zero is no bound
}

// Logs prints a run's recorded output: stdout to out, stderr to errw, so the two stay
// separate, byte for byte as the workload wrote them. Where output was dropped to keep the log
// under its cap, or lost to a full disk, a "moatc: ..." line goes to errw.
func (m *Manager) Logs(ctx context.Context, ref string, o LogOptions, out, errw io.Writer) error {
	r, err := m.Store.Find(ref)
	if err != nil {
		return err
	}
	path := m.Store.LogPath(r.ID)
	var w *logWatch
	if o.Follow {
		// Before the first read, so no write between the read and the wait is missed.
		w = watchLog(filepath.Dir(path))
		defer w.Close()
	}
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
		if err := w.wait(ctx); err != nil {
			return err
		}
	}
	defer lr.Close()
	p := newPrinter(out, errw, o)
	return lr.follow(ctx, w, p, o, func() (bool, error) {
		cur, err := m.Store.Get(r.ID)
		if err != nil || cur.Active() {
			return err == nil, err
		}
		// The shim's logger finishes once the task is deleted, right after the end is
		// recorded: wait for it (bounded), then drain what is left.
		st, ok := readLogStatus(m.Store.Dir(r.ID))
		return ok && !st.Done && cur.Finished != nil && time.Since(*cur.Finished) <= logFinishWait, nil
	})
}

// follow prints the log from the position o asks for; with o.Follow it then waits for writes
// while more says the log may still grow, and prints what is left once it says not.
func (lr *logReader) follow(ctx context.Context, w *logWatch, p *printer, o LogOptions, more func() (bool, error)) error {
	if err := lr.position(o, p); err != nil {
		return err
	}
	for {
		c, err := lr.next()
		if err == nil {
			p.print(c)
			continue
		}
		if err != io.EOF {
			return err
		}
		if err := p.flush(); err != nil {
			return err
		}
		if !o.Follow {
			return nil
		}
		if ok, err := more(); err != nil || !ok {
			if err != nil {
				return err
			}
			return lr.drain(p)
		}
		if err := w.wait(ctx); err != nil {
			return err
		}
	}
}

// logFinishWait bounds how long `logs -f` waits, after a run's end, for its logger to finish:
// the shim gives a logger about 12 s before it kills it.
const logFinishWait = 15 * time.Second

// position moves past what is not to be printed: everything there is now (New), or all but
// the last Tail lines, which it prints.
func (lr *logReader) position(o LogOptions, p *printer) error {
	if o.New {
		return lr.skip()
	}
	if o.Tail <= 0 {
		return nil
	}
	t := &tailer{n: o.Tail}
	for {
		c, err := lr.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if p.in(c) {
			t.add(c)
		}
	}
	for _, c := range t.result() {
		p.print(c)
	}
	return nil
}

// skip passes over what the log holds now.
func (lr *logReader) skip() error {
	for {
		if _, err := lr.next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// drain prints what is left in the log.
func (lr *logReader) drain(p *printer) error {
	for {
		c, err := lr.next()
		if err == io.EOF {
			return p.flush()
		}
		if err != nil {
			return err
		}
		p.print(c)
	}
}

// printer writes log records to two writers, buffered: the caller flushes when it waits.
type printer struct {
	out, errw    *bufio.Writer
	timestamps   bool
	since, until time.Time       // the window of records printed; zero is unbounded
	midLine      map[string]bool // the stream's last byte printed was not a newline
}

func newPrinter(out, errw io.Writer, o LogOptions) *printer {
	return &printer{out: bufio.NewWriterSize(out, 64<<10), errw: bufio.NewWriterSize(errw, 4<<10), timestamps: o.Timestamps,
		since: o.Since, until: o.Until, midLine: map[string]bool{}}
}

// in reports whether a record falls in the printer's window.
func (p *printer) in(c chunk) bool {
	return (p.since.IsZero() || !c.Time.Before(p.since)) && (p.until.IsZero() || !c.Time.After(p.until))
}

func (p *printer) print(c chunk) {
	if !p.in(c) {
		return
	}
	if c.Stream == markStream {
		// Its own line, after whatever was printed on stdout so far.
		p.out.Flush()
		p.errw.WriteString("moatc: " + string(c.Data) + "\n")
		p.errw.Flush()
		return
	}
	w := p.out
	if c.Stream == "stderr" {
		w = p.errw
	}
	if !p.timestamps {
		w.Write(c.Data)
		return
	}
	// Each line begins with the time of the read that brought its first byte.
	ts := c.Time.Format(time.RFC3339Nano) + " "
	data := c.Data
	for len(data) > 0 {
		if !p.midLine[c.Stream] {
			w.WriteString(ts)
		}
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			w.Write(data)
			p.midLine[c.Stream] = true
			return
		}
		w.Write(data[:i+1])
		p.midLine[c.Stream] = false
		data = data[i+1:]
	}
}

func (p *printer) flush() error {
	if err := p.out.Flush(); err != nil {
		return err
	}
	return p.errw.Flush()
}

// tailer keeps the records that hold the last n lines of the output, and the moatc notes
// right before them.
type tailer struct {
	n     int
	ring  []chunk
	lines []int // newlines in each record of ring
	rest  int   // newlines in ring[1:]
}

func (t *tailer) add(c chunk) {
	c.Data = bytes.Clone(c.Data) // the reader reuses its buffer
	nl := 0
	if c.Stream != markStream {
		nl = bytes.Count(c.Data, []byte{'\n'})
	}
	if len(t.ring) > 0 {
		t.rest += nl
	}
	t.ring, t.lines = append(t.ring, c), append(t.lines, nl)
	// With more than n newlines after the first record, the last n lines begin after it.
	for len(t.ring) > 1 && t.rest > t.n+1 {
		t.ring, t.lines = t.ring[1:], t.lines[1:]
		t.rest -= t.lines[0]
	}
}

// result returns the last n lines: the records from the one where they begin, that one cut
// to their beginning.
func (t *tailer) result() []chunk {
	// The last n lines begin after the nth newline from the end, not counting one that ends
	// the output.
	need := t.n
	last := true
	for k := len(t.ring) - 1; k >= 0; k-- {
		c := t.ring[k]
		if c.Stream == markStream {
			continue
		}
		d := c.Data
		for i := len(d) - 1; i >= 0; i-- {
			if d[i] != '\n' {
				last = false
				continue
			}
			if last {
				last = false
				continue
			}
			if need--; need == 0 {
				return t.from(k, i+1)
			}
		}
	}
	return t.ring
}

// from returns ring from byte off of record k; when that is a record's beginning, the moatc
// notes right before it come too.
func (t *tailer) from(k, off int) []chunk {
	if off == len(t.ring[k].Data) {
		k, off = k+1, 0
	}
	if off > 0 {
		c := t.ring[k]
		c.Data = c.Data[off:]
		return append([]chunk{c}, t.ring[k+1:]...)
	}
	for k > 0 && t.ring[k-1].Stream == markStream {
		k--
	}
	return t.ring[k:]
}

// logReader reads a run's log across rotations: output.1.log, then output.log, then each
// file that replaces it while it reads. It relies on the recorder's order: a file is renamed
// to output.1.log only after its last write, and output.1.log only ever holds a newer file.
type logReader struct {
	path, oldPath string
	f             *os.File
	fi            os.FileInfo // f's, to tell when output.log is another file
	rd            *bufio.Reader
	off           int64    // bytes of f read: where a damaged record is
	queued        *os.File // output.log, while f is the output.1.log before it
	rotated       bool     // f is no longer output.log: read to its end, then move on
	pos           count    // output read, or known dropped, so far
	partial       []byte   // the start of a record not yet whole
	buf           []byte   // where records are read
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

// openPair opens output.1.log (nil when there is none) and output.log as they were at one
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
		// Still output.log after old was opened: no rotation came between the two opens.
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
	lr.f, lr.rotated, lr.off = f, false, 0
	lr.fi, _ = f.Stat()
	lr.rd.Reset(f)
	lr.partial = nil // the end of the file before was torn: it never completes
}

// next returns the next record of output, or a moatc note, for output that was dropped before
// it among others. io.EOF means there is nothing more for now.
func (lr *logReader) next() (chunk, error) {
	for {
		c, err := lr.readRecord()
		if err == nil {
			if c.Mark == nil {
				if c.Stream != markStream {
					lr.pos.add(c.Data)
				}
				return c, nil
			}
			gap := count{c.Mark.Bytes, c.Mark.Lines}
			gap.sub(lr.pos)
			lr.pos = count{c.Mark.Bytes, c.Mark.Lines}
			if gap.bytes > 0 {
				text := droppedText(c.Mark.Cap, gap)
				if c.Mark.Reason != "" {
					text = c.Mark.Reason
				}
				return chunk{Time: c.Time, Stream: markStream, Data: []byte(text)}, nil
			}
			continue
		}
		if errors.Is(err, errDamaged) {
			return chunk{}, fmt.Errorf("reading %s: %w at byte %d (not written by moatc)", lr.f.Name(), err, lr.off)
		}
		if err != io.EOF {
			return chunk{}, err
		}
		if lr.queued != nil {
			lr.use(lr.queued)
			lr.queued = nil
			continue
		}
		if !lr.rotated {
			pi, err := os.Stat(lr.path)
			if err != nil && !errors.Is(err, os.ErrNotExist) {
				return chunk{}, err
			}
			if err == nil && os.SameFile(lr.fi, pi) {
				return chunk{}, io.EOF
			}
			// Renamed after its last write: read what is left, then move on.
			lr.rotated = true
			continue
		}
		old, cur, err := lr.openPair()
		if errors.Is(err, os.ErrNotExist) {
			return chunk{}, io.EOF // the new file is not there yet, or the run was removed
		}
		if err != nil {
			return chunk{}, err
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

// readRecord reads one whole record. One not yet whole (being written, or cut by a crash) is
// kept and completed by a later call: io.EOF until then, so neither logs nor logs -f stalls.
func (lr *logReader) readRecord() (chunk, error) {
	need := headerLen
	if len(lr.partial) >= headerLen {
		_, _, n, err := parseHeader(lr.partial)
		if err != nil {
			return chunk{}, err
		}
		need += n
	}
	for len(lr.partial) < need {
		if len(lr.partial) == 0 {
			// One buffer for every record: a record's data is valid until the next call.
			lr.partial = lr.buf[:0]
		}
		if cap(lr.partial) < need {
			lr.partial = append(make([]byte, 0, max(need, 64<<10)), lr.partial...)
			lr.buf = lr.partial[:0]
		}
		k, err := io.ReadFull(lr.rd, lr.partial[len(lr.partial):need])
		lr.partial = lr.partial[:len(lr.partial)+k]
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err != nil {
			return chunk{}, err
		}
		if need == headerLen {
			_, _, n, err := parseHeader(lr.partial)
			if err != nil {
				return chunk{}, err
			}
			need += n
		}
	}
	b := lr.partial
	lr.partial = nil
	lr.off += int64(len(b))
	stream, t, _, _ := parseHeader(b)
	c := chunk{Time: t, Stream: stream, Data: b[headerLen:]}
	if stream == markStream {
		var n note
		if err := json.Unmarshal(c.Data, &n); err != nil {
			return chunk{}, errDamaged
		}
		c.Data, c.Mark = []byte(n.Text), n.Mark
	}
	return c, nil
}

// Get resolves a run reference.
func (m *Manager) Get(ref string) (*state.Run, error) { return m.Store.Find(ref) }
