package run

import (
	"os"
	"path/filepath"
	"testing"
)

// A line still being written is not delivered until its newline comes; a missing file is no
// line yet.
func TestTraceReaderWholeLines(t *testing.T) {
	p := filepath.Join(t.TempDir(), "network.jsonl")
	tr := &traceReader{path: p}
	defer tr.close()
	var got []string
	line := func(b []byte) { got = append(got, string(b)) }
	if err := tr.read(line); err != nil || len(got) != 0 {
		t.Fatalf("no file: %v %q", err, got)
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString("{\"a\":1}\n{\"b\":")
	if err := tr.read(line); err != nil || len(got) != 1 || got[0] != "{\"a\":1}\n" {
		t.Fatalf("first read: %v %q", err, got)
	}
	f.WriteString("2}\n{\"c\":3}")
	if err := tr.read(line); err != nil || len(got) != 2 || got[1] != "{\"b\":2}\n" {
		t.Fatalf("second read: %v %q", err, got)
	}
	tr.partial = true
	if err := tr.read(line); err != nil || len(got) != 3 || got[2] != "{\"c\":3}" {
		t.Fatalf("last read: %v %q", err, got)
	}
}
