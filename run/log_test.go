package run

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moatc/moatc/state"
)

func TestRecorderKeepsStreamsApartByteForByte(t *testing.T) {
	path := filepath.Join(t.TempDir(), "output.log")
	rec, err := newRecorder(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, errw := rec.stream("stdout"), rec.stream("stderr")
	bin := make([]byte, 3<<20) // bigger than a record: split, and joined again by the reader
	for i := range bin {
		bin[i] = byte(i * 7 % 251)
	}
	out.Write([]byte("hel"))
	errw.Write([]byte("oops\n"))
	out.Write([]byte("lo\n\xff\x00"))
	out.Write(bin)
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	got := readLog(t, path)
	var stdout, stderr []byte
	for _, c := range got {
		if c.Time.IsZero() || len(c.Data) > maxChunk {
			t.Errorf("record %+.40v", c)
		}
		switch c.Stream {
		case "stdout":
			stdout = append(stdout, c.Data...)
		case "stderr":
			stderr = append(stderr, c.Data...)
		default:
			t.Errorf("record of stream %q", c.Stream)
		}
	}
	want := append([]byte("hello\n\xff\x00"), bin...)
	if !bytes.Equal(stdout, want) || string(stderr) != "oops\n" {
		t.Errorf("stdout %d bytes (want %d, equal %v), stderr %q", len(stdout), len(want), bytes.Equal(stdout, want), stderr)
	}
	if got[0].Stream != "stdout" || string(got[1].Data) != "oops\n" {
		t.Errorf("records out of order: %q then %q", got[0].Data, got[1].Data)
	}
	// The log is the output and 13 bytes a record.
	if size, out := fileSize(t, path), int64(len(want)+5); size > out+int64(len(got))*headerLen {
		t.Errorf("log of %d bytes for %d bytes of output", size, out)
	}
}

// A write the disk refuses is cut back off the file, counted, and said once output can be
// written again; the reader never meets a torn record.
func TestRecorderFullDisk(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getuid() != 0 && os.Getenv("CI") != "true" {
			t.Skipf("mount tmpfs needs root (not CI, so skipping): %v %s", err, out)
		}
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", dir).Run()
	filler := filepath.Join(dir, "filler")
	os.WriteFile(filler, make([]byte, 40<<10), 0o600)
	path := filepath.Join(dir, "output.log")
	rec, err := newRecorder(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := rec.stream("stdout")
	w.Write([]byte("first\n"))
	w.Write(bytes.Repeat([]byte("x"), 30<<10)) // does not fit
	w.Write([]byte("lost too\n"))
	os.Remove(filler)
	w.Write([]byte("after\n"))
	err = rec.Close()
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%d bytes (0 lines)", 30<<10)) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("Close: %v", err)
	}
	m, r := testStore(t, state.Stopped)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(m.Store.LogPath(r.ID), b, 0o600)
	var out, errw bytes.Buffer
	if err := m.Logs(context.Background(), r.ID, LogOptions{}, &out, &errw); err != nil {
		t.Fatal(err)
	}
	if out.String() != "first\nlost too\nafter\n" || !strings.HasPrefix(errw.String(), fmt.Sprintf("moatc: output lost: %d bytes (0 lines) could not be written to the log: ", 30<<10)) {
		t.Errorf("logs printed %q and %q", out.String(), errw.String())
	}
}

// numbered writes lines "line N" for N in [from, to) through w, in chunks that do not follow
// line ends, and returns the bytes written.
func numbered(t *testing.T, w io.Writer, from, to int) int64 {
	t.Helper()
	var b []byte
	for i := from; i < to; i++ {
		b = fmt.Appendf(b, "line %08d\n", i)
	}
	for p := b; len(p) > 0; {
		n := min(len(p), 4093)
		if _, err := w.Write(p[:n]); err != nil {
			t.Fatal(err)
		}
		p = p[n:]
	}
	return int64(len(b))
}

func readLog(t *testing.T, path string) []chunk {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cs []chunk
	lr := &logReader{f: f, rd: bufio.NewReader(f)}
	for {
		c, err := lr.readRecord()
		if err == io.EOF {
			return cs
		}
		if err != nil {
			t.Fatal(err)
		}
		c.Data = bytes.Clone(c.Data)
		cs = append(cs, c)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// lineNumbers parses "line N" lines and fails on anything else, except the piece of a line
// that follows a cut (output dropped under the cap): a proper suffix of such a line, not
// counted. It returns the numbers and the number of pieces.
func lineNumbers(t *testing.T, text string) (ns []int, pieces int) {
	t.Helper()
	for _, s := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(s, "line "))
		if err != nil || !strings.HasPrefix(s, "line ") || len(s) != 13 {
			if len(s) < 13 && strings.HasSuffix("line 00000000"[:13-len(s)]+s, s) {
				if _, err := strconv.Atoi(strings.TrimLeft(s, "line ")); err == nil || strings.Trim(s, "line ") == "" {
					pieces++
					continue
				}
			}
			t.Fatalf("unexpected output line %q", s)
		}
		ns = append(ns, n)
	}
	return ns, pieces
}

var droppedRe = regexp.MustCompile(`^moatc: output dropped: the log reached its cap of 64 KB; (\d+) earlier bytes \((\d+) lines\) were not kept$`)

// markers parses the moatc lines Logs wrote and returns the lines and bytes they report.
func markers(t *testing.T, text string) (n int, c count, rest []string) {
	t.Helper()
	for _, s := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		m := droppedRe.FindStringSubmatch(s)
		if m == nil {
			if s != "" {
				rest = append(rest, s)
			}
			continue
		}
		b, _ := strconv.ParseInt(m[1], 10, 64)
		l, _ := strconv.ParseInt(m[2], 10, 64)
		n, c.bytes, c.lines = n+1, c.bytes+b, c.lines+l
	}
	return n, c, rest
}

func testStore(t *testing.T, st string) (*Manager, *state.Run) {
	t.Helper()
	s, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &state.Run{ID: state.NewID(), Name: "logs", State: st, Created: time.Now()}
	if err := s.Create(r); err != nil {
		t.Fatal(err)
	}
	return &Manager{Store: s}, r
}

const testCap = 64 << 10

// filledLog writes 5 MB of numbered lines, then "bye" on stderr, into a log capped at
// testCap, and returns the path, the number of stdout lines and the bytes written.
func filledLog(t *testing.T, path string) (int, int64) {
	t.Helper()
	rec, err := newRecorder(path, testCap)
	if err != nil {
		t.Fatal(err)
	}
	const lines = 5 << 20 / 14
	out, errw := rec.stream("stdout"), rec.stream("stderr")
	written := numbered(t, out, 0, lines)
	errw.Write([]byte("bye\n"))
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
	return lines, written + 4
}

func TestRecorderKeepsTheEndUnderItsCap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "output.log")
	lines, written := filledLog(t, path)
	oldPath := rotatedPath(path)

	if total := fileSize(t, path) + fileSize(t, oldPath); total > testCap {
		t.Fatalf("log files take %d bytes, cap %d", total, testCap)
	}
	old, cur := readLog(t, oldPath), readLog(t, path)
	for _, f := range [][]chunk{old, cur} {
		if len(f) < 2 || f[0].Stream != markStream || f[0].Mark == nil {
			t.Fatalf("a rotated file does not begin with a mark: %+v", f[:min(len(f), 1)])
		}
	}
	var kept []byte
	var kc count
	rest := append(old[1:], cur[1:]...)
	for i, c := range rest {
		kc.add(c.Data)
		if c.Stream == "stderr" {
			if string(c.Data) != "bye\n" || i != len(rest)-1 {
				t.Fatalf("stderr record %q at %d of %d", c.Data, i, len(rest))
			}
			continue
		}
		kept = append(kept, c.Data...)
	}
	var all bytes.Buffer
	numbered(t, &all, 0, lines)
	if !bytes.HasSuffix(all.Bytes(), kept) || len(kept) < testCap/4 {
		t.Fatalf("the %d bytes kept are not the end of the output", len(kept))
	}
	dropped := count{written - kc.bytes, int64(lines+1) - kc.lines}
	if m := old[0].Mark; m.Bytes != dropped.bytes || m.Lines != dropped.lines || m.Cap != testCap {
		t.Errorf("output.1.log's mark %+v, want %d bytes and %d lines before it", m, dropped.bytes, dropped.lines)
	}
	if want := droppedText(testCap, dropped); string(cur[0].Data) != want {
		t.Errorf("output.log's mark says %q, want %q", cur[0].Data, want)
	}
}

func TestLogsPrintsWhatWasKeptAndWhatWasDropped(t *testing.T) {
	m, r := testStore(t, state.Stopped)
	lines, written := filledLog(t, m.Store.LogPath(r.ID))
	ctx := context.Background()

	var out, errw bytes.Buffer
	if err := m.Logs(ctx, r.ID, LogOptions{}, &out, &errw); err != nil {
		t.Fatal(err)
	}
	kept := out.String()
	ns, _ := lineNumbers(t, kept)
	for i, n := range ns {
		if n != lines-len(ns)+i {
			t.Fatalf("line %d of the output is %d: not the end of the output in order", i, n)
		}
	}
	var all bytes.Buffer
	numbered(t, &all, 0, lines)
	if !strings.HasSuffix(all.String(), kept) {
		t.Fatalf("the %d bytes printed are not the end of the output", len(kept))
	}
	nm, dropped, rest := markers(t, errw.String())
	if nm != 1 || !strings.HasPrefix(errw.String(), "moatc: ") || len(rest) != 1 || rest[0] != "bye" {
		t.Fatalf("error writer got %q, want one mark, then bye", errw.String())
	}
	// Byte for byte: what was printed and what the mark says was dropped make the output.
	if want := (count{written - 4 - int64(len(kept)), int64(lines) - int64(strings.Count(kept, "\n"))}); dropped != want {
		t.Errorf("mark reports %+v dropped, want %+v", dropped, want)
	}

	// -n across the two files: more lines than output.log holds, fewer than both, more than all.
	keptLines := strings.Count(kept, "\n") + 1 // and bye
	curLines := 0
	for _, c := range readLog(t, m.Store.LogPath(r.ID))[1:] {
		curLines += bytes.Count(c.Data, []byte{'\n'})
	}
	for _, tail := range []int{curLines + 10, 3, keptLines - 1, keptLines + 1, keptLines + 100} {
		out.Reset()
		errw.Reset()
		if err := m.Logs(ctx, r.ID, LogOptions{Tail: tail, Follow: true}, &out, &errw); err != nil {
			t.Fatal(err)
		}
		// bye is one of the lines, on stderr.
		want := min(tail, keptLines) - 1
		if got := strings.Count(out.String(), "\n"); got != want || !strings.HasSuffix(kept, out.String()) {
			t.Fatalf("-n %d printed %d lines (%d bytes), want %d ending the output", tail, got, out.Len(), want)
		}
		// The mark shows only when the tail reaches the drop.
		nm, _, rest := markers(t, errw.String())
		if wantm := tail >= keptLines; nm != btoi(wantm) || len(rest) != 1 {
			t.Errorf("-n %d: error writer got %q", tail, errw.String())
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Output bigger than the cap at once: records are at most a quarter of the cap, so the log
// keeps the end of it and stays under the cap.
func TestLogsKeepsTheEndOfAWriteBiggerThanTheCap(t *testing.T) {
	m, r := testStore(t, state.Stopped)
	rec, err := newRecorder(m.Store.LogPath(r.ID), testCap)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x\xff"), 3*testCap/2)
	big = append(big, "end\n"...)
	rec.stream("stdout").Write(big)
	rec.Close()
	if total := fileSize(t, m.Store.LogPath(r.ID)) + fileSize(t, rotatedPath(m.Store.LogPath(r.ID))); total > testCap {
		t.Errorf("log files take %d bytes, cap %d", total, testCap)
	}
	var stdout, errw bytes.Buffer
	if err := m.Logs(context.Background(), r.ID, LogOptions{}, &stdout, &errw); err != nil {
		t.Fatal(err)
	}
	if want := "moatc: " + droppedText(testCap, count{int64(len(big) - stdout.Len()), 0}) + "\n"; errw.String() != want {
		t.Errorf("error writer got %q, want %q", errw.String(), want)
	}
	if !bytes.HasSuffix(big, stdout.Bytes()) || stdout.Len() < testCap/4 {
		t.Errorf("stdout got %d bytes, not the end of the output", stdout.Len())
	}
}

func TestLogsFollowsAcrossRotations(t *testing.T) {
	for _, tc := range []struct {
		name  string
		burst int
		pause time.Duration
	}{
		{"keeping up", 50, 10 * time.Millisecond}, // about 4 KB a burst: a rotation every 80 ms
		// The reader has the first file open when two rotations drop it.
		{"falling behind", 20000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, r := testStore(t, state.Running)
			rec, err := newRecorder(m.Store.LogPath(r.ID), testCap)
			if err != nil {
				t.Fatal(err)
			}
			var out lockedBuffer
			var errw bytes.Buffer
			done := make(chan error)
			go func() {
				done <- m.Logs(context.Background(), r.ID, LogOptions{Follow: true}, &out, &errw)
			}()
			const lines = 3000
			w := rec.stream("stdout")
			numbered(t, w, 0, 10)
			for out.Len() < 10*14 {
				time.Sleep(time.Millisecond)
			}
			for i := 10; i < lines; i += tc.burst {
				numbered(t, w, i, min(i+tc.burst, lines))
				time.Sleep(tc.pause)
			}
			rec.Close()
			if _, err := m.Store.Update(r.ID, func(r *state.Run) error { r.State = state.Stopped; return nil }); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Logs -f did not end with the run")
			}
			if l := readLog(t, m.Store.LogPath(r.ID)); l[0].Mark == nil || l[0].Mark.Lines < 2*testCap/80 {
				t.Fatalf("the log rotated less than twice: %+v", l[0])
			}

			ns, _ := lineNumbers(t, out.String())
			for i := 1; i < len(ns); i++ {
				if ns[i] <= ns[i-1] {
					t.Fatalf("line %d after line %d", ns[i], ns[i-1])
				}
			}
			if ns[len(ns)-1] != lines-1 {
				t.Fatalf("the last line read is %d, want %d", ns[len(ns)-1], lines-1)
			}
			// Whatever the reader missed, marks account for exactly, byte for byte.
			nm, dropped, rest := markers(t, errw.String())
			if len(rest) > 0 || dropped.bytes != int64(lines*14-out.Len()) {
				t.Fatalf("%d of %d bytes printed, marks report %+v: %q", out.Len(), lines*14, dropped, errw.String())
			}
			t.Logf("%d lines read, %d bytes missing, %d marks", len(ns), dropped.bytes, nm)
		})
	}
}

// lockedBuffer lets a test watch what Logs has printed so far.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A record not yet whole at the end of the log (being written, or cut by a crash) is left for
// a later read: the records before it come at once, and it comes once whole.
func TestTornLastRecordDoesNotStall(t *testing.T) {
	m, r := testStore(t, state.Running)
	whole := appendRecord(nil, streamStdout, time.Now(), []byte("whole\n"))
	next := appendRecord(nil, streamStdout, time.Now(), []byte("next\n"))
	path := m.Store.LogPath(r.ID)
	os.WriteFile(path, append(whole, next[:5]...), 0o600)
	var out lockedBuffer
	var errw bytes.Buffer
	done := make(chan error)
	go func() { done <- m.Logs(context.Background(), r.ID, LogOptions{Follow: true}, &out, &errw) }()
	deadline := time.Now().Add(10 * time.Second)
	for out.String() != "whole\n" && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if out.String() != "whole\n" {
		t.Fatalf("before the torn record: %q", out.String())
	}
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	f.Write(next[5:])
	f.Close()
	m.Store.Update(r.ID, func(r *state.Run) error { r.State = state.Stopped; return nil })
	if err := <-done; err != nil || out.String() != "whole\nnext\n" {
		t.Errorf("logs -f: %v, printed %q", err, out.String())
	}
	// A record header nothing wrote is an error naming the file, not garbage printed.
	os.WriteFile(path, append(whole, bytes.Repeat([]byte{0xee}, 20)...), 0o600)
	err := m.Logs(context.Background(), r.ID, LogOptions{}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "damaged at byte 19") {
		t.Errorf("damaged log: %v", err)
	}
}

// --timestamps puts the time of a line's first byte before each line, per stream.
func TestLogsTimestampsEachLine(t *testing.T) {
	m, r := testStore(t, state.Stopped)
	rec, err := newRecorder(m.Store.LogPath(r.ID), 0)
	if err != nil {
		t.Fatal(err)
	}
	out, errw := rec.stream("stdout"), rec.stream("stderr")
	out.Write([]byte("a\nb"))
	errw.Write([]byte("e\n"))
	out.Write([]byte("c\nd\n"))
	rec.Close()
	var so, se bytes.Buffer
	if err := m.Logs(context.Background(), r.ID, LogOptions{Timestamps: true}, &so, &se); err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^(\S+Z (a|bc|d)\n){3}$`)
	if !re.MatchString(so.String()) || !regexp.MustCompile(`^\S+Z e\n$`).MatchString(se.String()) {
		t.Errorf("stdout %q stderr %q", so.String(), se.String())
	}
}

// gather makes one record of output that comes in bulk, and hands a line on at once.
func TestGather(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 512<<10)
	w.Write([]byte("a line\n"))
	if n, err := gather(int(r.Fd()), buf); n != 7 || err != nil {
		t.Fatalf("a line: %d %v", n, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for range 4 {
			w.Write(chunk)
		}
		w.Close()
	}()
	total := 0
	reads := 0
	for {
		n, err := gather(int(r.Fd()), buf)
		total += n
		if n > 0 {
			reads++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if total != 128<<10 {
		t.Errorf("gathered %d bytes, want %d", total, 128<<10)
	}
	t.Logf("128 KB written in 32 KB pieces came in %d records", reads)
}

func appendRecord(b []byte, s byte, t time.Time, p []byte) []byte {
	return append(appendHeader(b, s, t, len(p)), p...)
}
