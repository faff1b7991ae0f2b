package proxy

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// slowWriter records each Write and takes a while, so that lines queue up.
type slowWriter struct {
	mu     sync.Mutex
	writes int
	buf    strings.Builder
}

func (w *slowWriter) Write(p []byte) (int, error) {
	time.Sleep(200 * time.Microsecond)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writes++
	return w.buf.Write(p)
}

func TestTracerBatches(t *testing.T) {
	w := &slowWriter{}
	tr := &tracer{w: w, logf: t.Logf}
	var wg sync.WaitGroup
	for g := range 50 {
		wg.Go(func() {
			for i := range 100 {
				tr.write(&Entry{Method: "GET", Path: "/" + strings.Repeat("x", g), Port: i})
			}
		})
	}
	wg.Wait()
	tr.drains.Wait()
	lines := strings.Split(strings.TrimSuffix(w.buf.String(), "\n"), "\n")
	if len(lines) != 5000 {
		t.Fatalf("%d lines, want 5000", len(lines))
	}
	for _, l := range lines {
		var e Entry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
	}
	if w.writes >= 5000 {
		t.Errorf("%d writes for 5000 lines: no batching", w.writes)
	}
	t.Logf("%d writes for 5000 lines", w.writes)
}

func TestTraceHeaders(t *testing.T) {
	s := newSecrets([]string{"Bearer abcdefgh-123", "proxysecret"})
	g := &grant{names: []string{"X-Org"}, values: []string{"org-value-1"}}
	h := http.Header{
		"X-Org": {"org-value-1"}, "Cookie": {"a=b"}, "X-Goog-Api-Key": {"k"}, "X-Amz-Security-Token": {"t"},
		"Accept": {"*/*"}, "X-Echo": {"has abcdefgh-123 inside"}, "Session-Id": {"s"},
	}
	got := s.traceHeaders(h, g)
	for k, want := range map[string]string{
		"X-Org": redacted, "Cookie": redacted, "X-Goog-Api-Key": redacted, "X-Amz-Security-Token": redacted,
		"Accept": "*/*", "X-Echo": redacted, "Session-Id": redacted,
	} {
		if got[k] != want {
			t.Errorf("%s: %q, want %q", k, got[k], want)
		}
	}
	if e := s.scrub("dial failed for Bearer abcdefgh-123 and abcdefgh-123 with proxysecret"); strings.Contains(e, "abcdefgh") || strings.Contains(e, "proxysecret") {
		t.Errorf("scrub left a secret: %q", e)
	}
}
