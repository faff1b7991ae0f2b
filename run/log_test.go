package run

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moatc/moatc/state"
)

func TestRecorderSplitsLinesPerStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.jsonl")
	rec, err := newRecorder(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	out, errw := rec.stream("stdout"), rec.stream("stderr")
	out.Write([]byte("hel"))
	errw.Write([]byte("oops\n"))
	out.Write([]byte("lo\nwor"))
	out.Write([]byte("ld\nno-newline"))
	out.flush()
	errw.flush()
	rec.Close()

	f, _ := os.Open(path)
	defer f.Close()
	var got []Line
	lr := &logReader{rd: bufio.NewReader(f)}
	for {
		l, err := lr.readLine()
		if err != nil {
			break
		}
		got = append(got, l)
	}
	want := []Line{{Stream: "stderr", Text: "oops"}, {Stream: "stdout", Text: "hello"}, {Stream: "stdout", Text: "world"}, {Stream: "stdout", Text: "no-newline", Partial: true}}
	if len(got) != len(want) {
		t.Fatalf("got %d lines %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i].Stream != want[i].Stream || got[i].Text != want[i].Text || got[i].Partial != want[i].Partial || got[i].Time.IsZero() {
			t.Errorf("line %d: %+v, want %+v", i, got[i], want[i])
		}
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

func readLog(t *testing.T, path string) []Line {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ls []Line
	lr := &logReader{rd: bufio.NewReader(f)}
	for {
		l, err := lr.readLine()
		if err == io.EOF {
			return ls
		}
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
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

// lineNumbers parses "line N" lines and fails on anything else.
func lineNumbers(t *testing.T, text string) []int {
	t.Helper()
	var ns []int
	for _, s := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(s, "line "))
		if err != nil || !strings.HasPrefix(s, "line ") {
			t.Fatalf("unexpected output line %q", s)
		}
		ns = append(ns, n)
	}
	return ns
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
	path := filepath.Join(t.TempDir(), "log.jsonl")
	lines, written := filledLog(t, path)
	oldPath := filepath.Join(filepath.Dir(path), "log.1.jsonl")

	if total := fileSize(t, path) + fileSize(t, oldPath); total > testCap+64<<10 {
		t.Fatalf("log files take %d bytes, cap %d", total, testCap)
	}
	old, cur := readLog(t, oldPath), readLog(t, path)
	for _, f := range [][]Line{old, cur} {
		if len(f) < 2 || f[0].Stream != markStream || f[0].Mark == nil {
			t.Fatalf("a rotated file does not begin with a mark: %+v", f[:min(len(f), 1)])
		}
	}
	var kept count
	next := -1
	for _, l := range append(old[1:], cur[1:]...) {
		kept.add(l)
		if l.Stream == "stderr" {
			if l.Text != "bye" {
				t.Fatalf("stderr line %q", l.Text)
			}
			continue
		}
		n := lineNumbers(t, l.Text)[0]
		if next >= 0 && n != next {
			t.Fatalf("line %d follows line %d", n, next-1)
		}
		next = n + 1
	}
	if next != lines {
		t.Fatalf("last line kept is %d, want %d", next-1, lines-1)
	}
	dropped := count{written - kept.bytes, int64(lines+1) - kept.lines}
	if m := old[0].Mark; m.Bytes != dropped.bytes || m.Lines != dropped.lines || m.Cap != testCap {
		t.Errorf("log.1.jsonl's mark %+v, want %d bytes and %d lines before it", m, dropped.bytes, dropped.lines)
	}
	if want := droppedText(testCap, dropped); cur[0].Text != want {
		t.Errorf("log.jsonl's mark says %q, want %q", cur[0].Text, want)
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
	ns := lineNumbers(t, out.String())
	for i, n := range ns {
		if n != lines-len(ns)+i {
			t.Fatalf("line %d of the output is %d: not the end of the output in order", i, n)
		}
	}
	nm, dropped, rest := markers(t, errw.String())
	if nm != 1 || !strings.HasPrefix(errw.String(), "moatc: ") || len(rest) != 1 || rest[0] != "bye" {
		t.Fatalf("error writer got %q, want one mark, then bye", errw.String())
	}
	if want := (count{written - int64(len(ns))*14 - 4, int64(lines - len(ns))}); dropped != want {
		t.Errorf("mark reports %+v dropped, want %+v", dropped, want)
	}

	// -n across the two files: more lines than log.jsonl holds, fewer than both.
	curLines := len(readLog(t, m.Store.LogPath(r.ID))) - 2 // its mark and bye
	for _, tail := range []int{curLines + 10, 3, len(ns) + 1, len(ns) + 100} {
		out.Reset()
		errw.Reset()
		if err := m.Logs(ctx, r.ID, LogOptions{Tail: tail, Follow: true}, &out, &errw); err != nil {
			t.Fatal(err)
		}
		got := lineNumbers(t, out.String())
		want := min(tail-1, len(ns)) // bye is one of the lines
		if len(got) != want || got[len(got)-1] != lines-1 || got[0] != lines-want {
			t.Fatalf("-n %d printed %d lines from %d, want %d ending at %d", tail, len(got), got[0], want, lines-1)
		}
		// The mark shows only when the tail reaches the drop.
		nm, _, rest := markers(t, errw.String())
		if wantm := tail > len(ns); nm != btoi(wantm) || len(rest) != 1 {
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

func TestLogsMarksALineBiggerThanHalfTheCap(t *testing.T) {
	m, r := testStore(t, state.Stopped)
	rec, err := newRecorder(m.Store.LogPath(r.ID), testCap)
	if err != nil {
		t.Fatal(err)
	}
	out := rec.stream("stdout")
	// Invalid UTF-8 is counted as the reader will see it.
	big := strings.Repeat("x\xff", 20000) + "\n"
	for i := 0; i < 10; i++ {
		out.Write([]byte(fmt.Sprintf("%d", i) + big))
	}
	rec.Close()
	if _, err := os.Stat(rotatedPath(m.Store.LogPath(r.ID))); !os.IsNotExist(err) {
		t.Errorf("log.1.jsonl is kept with a line over half the cap: %v", err)
	}
	var stdout, errw bytes.Buffer
	if err := m.Logs(context.Background(), r.ID, LogOptions{}, &stdout, &errw); err != nil {
		t.Fatal(err)
	}
	lineLen := int64(len(validText([]byte(big))) + 1) // with its digit
	if want := "moatc: " + droppedText(testCap, count{9 * lineLen, 9}) + "\n"; errw.String() != want {
		t.Errorf("error writer got %q, want %q", errw.String(), want)
	}
	if !strings.HasPrefix(stdout.String(), "9x") || int64(stdout.Len()) != lineLen {
		t.Errorf("stdout got %d bytes beginning %.10q", stdout.Len(), stdout.String())
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

			ns := lineNumbers(t, out.String())
			missing := 0
			for i, n := range ns {
				prev := -1
				if i > 0 {
					prev = ns[i-1]
				}
				if n <= prev {
					t.Fatalf("line %d after line %d", n, prev)
				}
				missing += n - prev - 1
			}
			if ns[len(ns)-1] != lines-1 {
				t.Fatalf("the last line read is %d, want %d", ns[len(ns)-1], lines-1)
			}
			// Whatever the reader missed, marks account for exactly.
			nm, dropped, rest := markers(t, errw.String())
			if len(rest) > 0 || dropped != (count{int64(missing) * 14, int64(missing)}) {
				t.Fatalf("%d lines missing, marks report %+v: %q", missing, dropped, errw.String())
			}
			t.Logf("%d lines read, %d missing, %d marks", len(ns), missing, nm)
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

// The IO copy may still write after the drain gave up, while the run's end flushes: the race
// detector (go test -race) holds this to account.
func TestLineWriterFlushWhileWriting(t *testing.T) {
	rec, err := newRecorder(filepath.Join(t.TempDir(), "log.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	w := rec.stream("stdout")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2000 {
			w.Write([]byte("partial "))
			w.Write([]byte("line\n"))
		}
	}()
	for range 2000 {
		w.flush()
	}
	<-done
	w.flush()
	if err := rec.Close(); err != nil {
		t.Fatal(err)
	}
}

// A torn last line (a crash or a full disk cut it) once stalled `moatc logs` 5 s; it is now
// left for a later read, and the lines before it come at once.
func TestTornLastLineDoesNotStall(t *testing.T) {
	dir := t.TempDir()
	st, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	r := &state.Run{ID: "0123456789ab", Name: "torn", State: state.Stopped}
	if err := st.Create(r); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(st.LogPath(r.ID), []byte(`{"time":"2026-11-30T12:00:00Z","stream":"stdout","line":"whole"}`+"\n"+`{"time":"2026-11-30T12:00:01Z","stre`), 0o600)
	m := &Manager{Store: st}
	var out, errw bytes.Buffer
	start := time.Now()
	if err := m.Logs(context.Background(), "torn", LogOptions{}, &out, &errw); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second || out.String() != "whole\n" {
		t.Errorf("logs took %v and printed %q", d, out.String())
	}
}
