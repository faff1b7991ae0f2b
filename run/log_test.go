package run

import (
	"bufio"
	"os"
	"path/filepath"
	"testing"
)

func TestRecorderSplitsLinesPerStream(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.jsonl")
	rec, err := newRecorder(path)
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
	rd := bufio.NewReader(f)
	for {
		l, err := readLine(rd)
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
