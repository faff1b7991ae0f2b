package run

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultLogMax is the cap on a run's log files on disk when its spec sets none.
const DefaultLogMax = 100 << 20

// A run's log (output.log) is a sequence of records, each a header and the bytes of one read
// of one stream, exactly as the workload wrote them:
//
//	stream  1 byte   1 stdout, 2 stderr, 3 tty, 4 moatc (a JSON note from moatc)
//	time    8 bytes  big-endian Unix nanoseconds
//	length  4 bytes  big-endian, at most maxChunk
//	data    length bytes
//
// Binary output comes back byte for byte, and the log is the output plus 13 bytes a read
// (JSON lines made it 4x the output). A record is written with one write, and a write that
// fails is cut back off, so a record is whole or absent, never torn in the middle of a file.
const (
	headerLen = 13
	maxChunk  = 1 << 20
)

// Streams of a log record.
const (
	streamStdout byte = 1 + iota
	streamStderr
	streamTTY
	streamMoatc
)

// markStream is the name of moatc's own records.
const markStream = "moatc"

var streamNames = map[byte]string{streamStdout: "stdout", streamStderr: "stderr", streamTTY: "tty", streamMoatc: markStream}

// chunk is one record of a run's log.
type chunk struct {
	Time   time.Time
	Stream string // stdout, stderr, tty, or moatc for moatc's own notes
	Data   []byte // the output; for a moatc record, the note's text
	// Mark is set on the moatc record that begins each log file after a rotation, and on one
	// that follows output that could not be written.
	Mark *Mark
}

// note is the payload of a moatc record.
type note struct {
	Text string `json:"text"`
	Mark *Mark  `json:"mark,omitempty"`
}

// Mark says where a log file (or what follows a failed write) begins in the run's output,
// so a reader that has seen less output than that knows the difference was dropped, and why.
type Mark struct {
	Cap    int64  `json:"cap"`              // the cap on the log files, in bytes
	Bytes  int64  `json:"bytes"`            // output recorded before this point: bytes
	Lines  int64  `json:"lines"`            // and newlines
	Reason string `json:"reason,omitempty"` // why output was dropped, when not the cap
}

// count is an amount of output: its bytes (newlines included) and newlines.
type count struct{ bytes, lines int64 }

func (c *count) add(p []byte) {
	c.bytes += int64(len(p))
	c.lines += int64(bytes.Count(p, []byte{'\n'}))
}

func (c *count) plus(o count) { c.bytes += o.bytes; c.lines += o.lines }
func (c *count) sub(o count)  { c.bytes -= o.bytes; c.lines -= o.lines }

// recorder writes the output of a run's streams to its log. To stay under its cap it keeps
// the end of the output: when output.log reaches half the cap it becomes output.1.log,
// replacing the older one, and a new output.log begins with a mark.
type recorder struct {
	mu      sync.Mutex
	path    string
	oldPath string
	max     int64
	f       *os.File
	hdr     []byte
	size    int64 // bytes in output.log; counted, so writes need no stat
	hasOut  bool  // output.log holds output, not just its mark
	start   count // output before output.log
	oldOut  count // output in output.1.log
	total   count // output recorded, or dropped for the cap
	dropped count // output in files removed
	// lost is output that could not be written (a full disk), since the last mark; err is
	// the first such failure, kept for Close.
	lost    count
	lostAll count
	err     error
	closed  bool
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
	return &recorder{path: path, oldPath: rotatedPath(path), max: max, f: f, size: fi.Size(), hasOut: fi.Size() > 0}, nil
}

// rotatedPath returns the name a log file takes when it rotates: output.log -> output.1.log.
func rotatedPath(path string) string {
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + ".1" + ext
}

// write records p as output of stream s, in records of at most maxChunk bytes.
func (r *recorder) write(s byte, p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	// A record is at most a quarter of the cap, so one file never passes half of it.
	for len(p) > 0 {
		n := min(len(p), maxChunk, int(r.max/4))
		r.record(s, p[:n])
		p = p[n:]
	}
}

func (r *recorder) record(s byte, p []byte) {
	if r.closed {
		return
	}
	n := int64(headerLen + len(p))
	if r.f != nil && r.hasOut && r.size+n > r.max/2 {
		if err := r.rotate(); err != nil {
			r.fail(err)
		}
	}
	if r.f != nil && r.lost.bytes > 0 {
		// Output was lost before this (a full disk): say so first, if that can be written now.
		text := fmt.Sprintf("output lost: %d bytes (%d lines) could not be written to the log: %v", r.lost.bytes, r.lost.lines, r.err)
		if r.append(streamMoatc, r.noteBytes(text, &Mark{Cap: r.max, Bytes: r.total.bytes, Lines: r.total.lines, Reason: text})) == nil {
			r.lost = count{}
		}
	}
	var c count
	c.add(p)
	if r.f == nil || r.lost.bytes > 0 || r.append(s, p) != nil {
		r.lost.plus(c)
		r.lostAll.plus(c)
	}
	r.total.plus(c)
}

// append writes one record with one write; a write that fails is cut back off the file.
func (r *recorder) append(s byte, p []byte) error {
	r.hdr = appendHeader(r.hdr[:0], s, time.Now(), len(p))
	// Header and data in one writev: no copy of the output.
	n, err := writev(int(r.f.Fd()), r.hdr, p)
	if err != nil {
		err = &os.PathError{Op: "write", Path: r.f.Name(), Err: err}
		if terr := r.f.Truncate(r.size); terr != nil {
			// The file cannot be made whole again: nothing more goes into it.
			r.f.Close()
			r.f = nil
		}
		r.fail(err)
		return err
	}
	r.size += int64(n)
	if s != streamMoatc {
		r.hasOut = true
	}
	return nil
}

// writev writes a and b whole, or says why not (a short write is continued, so a full disk
// gives its ENOSPC).
func writev(fd int, a, b []byte) (int, error) {
	total := 0
	for len(a)+len(b) > 0 {
		n, err := unix.Writev(fd, [][]byte{a, b})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, io.ErrShortWrite
		}
		total += n
		if n >= len(a) {
			b, a = b[n-len(a):], nil
		} else {
			a = a[n:]
		}
	}
	return total, nil
}

func (r *recorder) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

func appendHeader(b []byte, s byte, t time.Time, n int) []byte {
	b = append(b, s)
	b = binary.BigEndian.AppendUint64(b, uint64(t.UnixNano()))
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

func (r *recorder) noteBytes(text string, m *Mark) []byte {
	b, _ := json.Marshal(note{Text: text, Mark: m})
	return b
}

// rotate moves output.log to output.1.log and starts a new output.log with a mark.
func (r *recorder) rotate() error {
	r.f.Close()
	r.f = nil
	cur := r.total
	cur.sub(r.start)
	r.dropped.plus(r.oldOut)
	r.oldOut = cur
	if err := os.Rename(r.path, r.oldPath); err != nil {
		return fmt.Errorf("rotating the run's log: %w", err)
	}
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("rotating the run's log: %w", err)
	}
	r.f, r.size, r.hasOut = f, 0, false
	r.start = r.total
	text := fmt.Sprintf("log rotated: it reached half its cap of %s; earlier output is in %s", formatSize(r.max), filepath.Base(r.oldPath))
	if r.dropped.bytes > 0 {
		text = droppedText(r.max, r.dropped)
	}
	return r.append(streamMoatc, r.noteBytes(text, &Mark{Cap: r.max, Bytes: r.total.bytes, Lines: r.total.lines}))
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

// stream returns a writer of one stream's output: "stdout", "stderr" or "tty".
func (r *recorder) stream(name string) *streamWriter {
	for s, n := range streamNames {
		if n == name {
			return &streamWriter{r: r, s: s}
		}
	}
	panic("run: unknown log stream " + name)
}

// lostError says what output could not be written, or nil when all of it was.
func (r *recorder) lostError() error {
	if r.lostAll.bytes == 0 && r.err == nil {
		return nil
	}
	return fmt.Errorf("%d bytes (%d lines) of output could not be written to the log: %w", r.lostAll.bytes, r.lostAll.lines, r.err)
}

// Close ends the log. Its error says what output could not be written, if any.
func (r *recorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.lostError()
	}
	r.closed = true
	if r.f != nil {
		if err := r.f.Close(); err != nil {
			r.fail(err)
		}
		r.f = nil
	}
	return r.lostError()
}

// streamWriter records what it is given as one stream's output. Every write is a record of
// its own on disk at once, so `moatc logs -f` sees output as it comes.
type streamWriter struct {
	r *recorder
	s byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.r.write(w.s, p)
	return len(p), nil
}

// errDamaged is a record header no recorder writes: the file was changed by something else.
var errDamaged = errors.New("the log is damaged")

// parseHeader reads a record header: the stream's name and the data's length.
func parseHeader(h []byte) (stream string, t time.Time, n int, err error) {
	name, ok := streamNames[h[0]]
	n = int(binary.BigEndian.Uint32(h[9:13]))
	if !ok || n > maxChunk {
		return "", time.Time{}, 0, errDamaged
	}
	return name, time.Unix(0, int64(binary.BigEndian.Uint64(h[1:9]))).UTC(), n, nil
}

// tee returns a writer to the log and, best effort, to out: a closed terminal or pipe on the
// caller's side must not stop the recording.
func tee(out io.Writer, l *streamWriter) io.Writer {
	if out == nil {
		return l
	}
	return &teeWriter{out: out, log: l}
}

type teeWriter struct {
	out    io.Writer
	log    *streamWriter
	outErr error
}

func (t *teeWriter) Write(p []byte) (int, error) {
	if t.outErr == nil {
		_, t.outErr = t.out.Write(p)
	}
	return t.log.Write(p)
}
