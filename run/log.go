package run

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultLogMax is the cap on a run's log files on disk when its spec sets none.
const DefaultLogMax = 100 << 20

// markStream is the stream of moatc's own lines in a log.
const markStream = "moatc"

// Line is one line of a run's log (log.jsonl).
type Line struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // stdout, stderr or tty; moatc for moatc's own lines
	Text   string    `json:"line"`
	// Partial marks output that ended without a newline.
	Partial bool `json:"partial,omitempty"`
	// Mark is set on the moatc line that begins each log file after a rotation.
	Mark *Mark `json:"mark,omitempty"`
}

// Mark says where a log file begins in the run's output, so a reader that has seen less
// output than that knows the difference was dropped, and how much.
type Mark struct {
	Cap   int64 `json:"cap"`   // the cap on the log files, in bytes
	Bytes int64 `json:"bytes"` // output recorded before this file: bytes
	Lines int64 `json:"lines"` // and newlines
}

// count is an amount of output: its bytes (newlines included) and newlines.
type count struct{ bytes, lines int64 }

func (c *count) add(l Line) {
	c.bytes += int64(len(l.Text))
	if !l.Partial {
		c.bytes++
		c.lines++
	}
}

func (c *count) sub(o count) { c.bytes -= o.bytes; c.lines -= o.lines }

// recorder writes timestamped lines of several streams to a run's log. To stay under its cap
// it keeps the end of the output: when log.jsonl reaches half the cap it becomes
// log.1.jsonl, replacing the older one, and a new log.jsonl begins with a mark.
type recorder struct {
	mu      sync.Mutex
	path    string
	oldPath string
	max     int64
	f       *os.File
	w       *bufio.Writer
	buf     bytes.Buffer
	enc     *json.Encoder
	size    int64 // bytes in log.jsonl; counted, so writes need no stat
	hasOut  bool  // log.jsonl holds output, not just its mark
	start   count // output before log.jsonl
	oldOut  count // output in log.1.jsonl
	total   count // output recorded
	dropped count // output in files removed
	err     error // a rotation failed: nothing more is recorded
}

// newRecorder opens the log at path. max caps the bytes its files take together; 0 means
// DefaultLogMax.
func newRecorder(path string, max int64) (*recorder, error) {
	if max <= 0 {
		max = DefaultLogMax
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	r := &recorder{path: path, oldPath: rotatedPath(path), max: max, f: f, w: bufio.NewWriterSize(f, 64<<10),
		size: fi.Size(), hasOut: fi.Size() > 0}
	r.enc = json.NewEncoder(&r.buf)
	// Escaping <, > and & would make the log bigger for nothing.
	r.enc.SetEscapeHTML(false)
	return r, nil
}

// rotatedPath returns the name a log file takes when it rotates: log.jsonl -> log.1.jsonl.
func rotatedPath(path string) string {
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + ".1" + ext
}

func (r *recorder) line(stream string, b []byte, partial bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return
	}
	l := Line{Time: time.Now().UTC(), Stream: stream, Text: validText(b), Partial: partial}
	r.buf.Reset()
	r.enc.Encode(l)
	n := int64(r.buf.Len())
	if r.hasOut && r.size+n > r.max/2 {
		if r.err = r.rotate(); r.err != nil {
			return
		}
	}
	r.w.Write(r.buf.Bytes())
	r.size += n
	r.hasOut = true
	r.total.add(l)
}

// rotate moves log.jsonl to log.1.jsonl and starts a new log.jsonl with a mark.
func (r *recorder) rotate() error {
	// A failed flush (a full disk) loses lines, but the rotation that frees space goes on.
	r.w.Flush()
	r.f.Close()
	r.f, r.w = nil, nil
	cur := r.total
	cur.sub(r.start)
	r.dropped.bytes += r.oldOut.bytes
	r.dropped.lines += r.oldOut.lines
	r.oldOut = cur
	if err := os.Rename(r.path, r.oldPath); err != nil {
		return fmt.Errorf("rotating the run's log: %w", err)
	}
	if r.size > r.max/2 {
		// A single line bigger than half the cap: keeping it would break the cap. It is
		// renamed first so that log.1.jsonl only ever moves forward for readers.
		if err := os.Remove(r.oldPath); err != nil {
			return fmt.Errorf("rotating the run's log: %w", err)
		}
		r.dropped.bytes += cur.bytes
		r.dropped.lines += cur.lines
		r.oldOut = count{}
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("rotating the run's log: %w", err)
	}
	r.f, r.w = f, bufio.NewWriterSize(f, 64<<10)
	r.start = r.total
	text := fmt.Sprintf("log rotated: it reached half its cap of %s; earlier output is in %s", formatSize(r.max), filepath.Base(r.oldPath))
	if r.dropped.bytes > 0 {
		text = droppedText(r.max, r.dropped)
	}
	b, err := json.Marshal(Line{Time: time.Now().UTC(), Stream: markStream, Text: text,
		Mark: &Mark{Cap: r.max, Bytes: r.total.bytes, Lines: r.total.lines}})
	if err != nil {
		return err
	}
	b = append(b, '\n')
	r.w.Write(b)
	r.size, r.hasOut = int64(len(b)), false
	return nil
}

func droppedText(max int64, c count) string {
	return fmt.Sprintf("output dropped: the log reached its cap of %s; %d earlier bytes (%d lines) were not kept", formatSize(max), c.bytes, c.lines)
}

func formatSize(n int64) string {
	switch {
	case n%(1<<30) == 0:
		return fmt.Sprintf("%d GB", n>>30)
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// validText returns b with each invalid UTF-8 byte replaced as encoding/json would replace
// it, so the output the recorder counts is the output a reader decodes.
func validText(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var s strings.Builder
	for len(b) > 0 {
		c, n := utf8.DecodeRune(b)
		if c == utf8.RuneError && n == 1 {
			s.WriteString("\uFFFD")
		} else {
			s.Write(b[:n])
		}
		b = b[n:]
	}
	return s.String()
}

// stream returns a writer that splits what it is given into lines of one stream.
func (r *recorder) stream(name string) *lineWriter { return &lineWriter{r: r, name: name} }

func (r *recorder) flush() {
	r.mu.Lock()
	if r.w != nil {
		r.w.Flush()
	}
	r.mu.Unlock()
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return r.err
	}
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	r.f, r.w = nil, nil
	if r.err == nil {
		r.err = os.ErrClosed
	}
	return err
}

type lineWriter struct {
	r    *recorder
	name string
	// mu: the IO copy may still write after a drain timed out, while the end of the run
	// flushes the same buffer.
	mu  sync.Mutex
	buf []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	// Whole chunks reach the file at once, so `moatc logs -f` sees output as it comes.
	defer l.r.flush()
	for {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.buf = append(l.buf, p...)
			// Bound memory for output that never ends a line.
			if len(l.buf) >= 64<<10 {
				l.r.line(l.name, l.buf, true)
				l.buf = l.buf[:0]
			}
			return n, nil
		}
		if len(l.buf) > 0 {
			l.buf = append(l.buf, p[:i]...)
			l.r.line(l.name, l.buf, false)
			l.buf = l.buf[:0]
		} else {
			l.r.line(l.name, p[:i], false)
		}
		p = p[i+1:]
	}
}

// flush records a last line that had no newline.
func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.r.line(l.name, l.buf, true)
		l.buf = nil
	}
}

// tee returns a writer to the log and, best effort, to out: a closed terminal or pipe on the
// caller's side must not stop the recording.
func tee(out io.Writer, l *lineWriter) io.Writer {
	if out == nil {
		return l
	}
	return &teeWriter{out: out, log: l}
}

type teeWriter struct {
	out    io.Writer
	log    *lineWriter
	outErr error
}

func (t *teeWriter) Write(p []byte) (int, error) {
	if t.outErr == nil {
		_, t.outErr = t.out.Write(p)
	}
	return t.log.Write(p)
}
