package run

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"sync"
	"time"
)

// Line is one line of a run's log (log.jsonl).
type Line struct {
	Time   time.Time `json:"time"`
	Stream string    `json:"stream"` // stdout, stderr or tty
	Text   string    `json:"line"`
	// Partial marks output that ended without a newline.
	Partial bool `json:"partial,omitempty"`
}

// recorder writes timestamped lines of several streams to one log file.
type recorder struct {
	mu  sync.Mutex
	f   *os.File
	w   *bufio.Writer
	enc *json.Encoder
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 64<<10)
	return &recorder{f: f, w: w, enc: json.NewEncoder(w)}, nil
}

func (r *recorder) line(stream string, b []byte, partial bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enc.Encode(Line{Time: time.Now().UTC(), Stream: stream, Text: string(b), Partial: partial})
}

// stream returns a writer that splits what it is given into lines of one stream.
func (r *recorder) stream(name string) *lineWriter { return &lineWriter{r: r, name: name} }

func (r *recorder) flush() {
	r.mu.Lock()
	r.w.Flush()
	r.mu.Unlock()
}

func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.w.Flush()
	if cerr := r.f.Close(); err == nil {
		err = cerr
	}
	return err
}

type lineWriter struct {
	r    *recorder
	name string
	buf  []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
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
