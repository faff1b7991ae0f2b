package proxy

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Decisions recorded in Entry.Decision.
const (
	decAllowed       = "allowed"
	decDeniedPolicy  = "denied-policy"
	decDeniedAuth    = "denied-auth"
	decDeniedAddress = "denied-address"
	decPlainHTTP     = "refused-plain-http"
	decMismatch      = "refused-mismatch"
	decError         = "error"
)

// Entry is one line of the trace (network.jsonl): one request, refused ones included.
type Entry struct {
	Time       time.Time         `json:"time"`
	Method     string            `json:"method"`
	Scheme     string            `json:"scheme"` // https or http
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	Path       string            `json:"path"`   // without the query, which can carry secrets
	Status     int               `json:"status"` // what the client got
	DurationMS float64           `json:"duration_ms"`
	BytesOut   int64             `json:"bytes_out"` // request body bytes sent upstream
	BytesIn    int64             `json:"bytes_in"`  // response body bytes returned to the client
	Grant      string            `json:"grant,omitempty"`
	Decision   string            `json:"decision"`
	Error      string            `json:"error,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"` // as sent upstream, first value, secrets redacted
}

const redacted = "[redacted]"

// tracer writes entries as JSON lines. Writes are serialized and batched by group commit:
// the request that finds no write in progress writes everything queued, including lines that
// other requests queue meanwhile, so an idle proxy writes each line at once and a busy one
// makes one write per batch instead of one per request.
type tracer struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled when a batch is written
	w       io.Writer
	queue   []byte
	spare   []byte
	writing bool
	failed  bool
	logf    func(string, ...any)
	drains  sync.WaitGroup // goroutines that took over a long drain
}

const (
	traceQueueMax    = 1 << 20 // queued bytes beyond which requests wait for the writer
	traceDrainRounds = 4       // batches a request writes before a goroutine takes over
)

func (t *tracer) write(e *Entry) {
	if t.w == nil {
		return
	}
	b, err := json.Marshal(e)
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cond.L == nil {
		t.cond.L = &t.mu
	}
	for t.writing && len(t.queue) > traceQueueMax {
		t.cond.Wait()
	}
	t.queue = append(append(t.queue, b...), '\n')
	if t.writing {
		return // the current writer takes it
	}
	t.writing = true
	t.drainLocked(traceDrainRounds)
}

// drainLocked writes the queue, with mu held and writing set. A request stops after some
// batches (it must not be held up by a steady stream of others' lines) and leaves the rest to
// a goroutine; rounds < 0 means until empty.
func (t *tracer) drainLocked(rounds int) {
	for len(t.queue) > 0 {
		if rounds == 0 {
			t.drains.Add(1)
			go func() {
				defer t.drains.Done()
				t.mu.Lock()
				defer t.mu.Unlock()
				t.drainLocked(-1)
			}()
			return
		}
		rounds--
		batch := t.queue
		t.queue = t.spare[:0]
		t.mu.Unlock()
		_, err := t.w.Write(batch)
		t.mu.Lock()
		if cap(batch) <= 64<<10 {
			t.spare = batch[:0] // reuse, unless a burst made it big
		} else {
			t.spare = nil // never the array t.queue now holds
		}
		if err != nil && !t.failed {
			t.failed = true // once: a full disk would otherwise log every request
			t.logf("write network trace: %v", err)
		}
		t.cond.Broadcast()
	}
	t.writing = false
}

// secretNames are header names (lower case) whose values are never recorded.
var secretNames = map[string]bool{
	"authorization": true, "proxy-authorization": true, "cookie": true, "set-cookie": true,
	"x-api-key": true, "api-key": true, "x-auth-token": true,
}

// secretParts: a header whose lower-case name contains one of these is redacted too.
var secretParts = []string{"token", "secret", "key", "auth", "passw", "session", "cookie", "credential", "signature"}

func secretHeader(name string) bool {
	l := strings.ToLower(name)
	if secretNames[l] {
		return true
	}
	for _, p := range secretParts {
		if strings.Contains(l, p) {
			return true
		}
	}
	return false
}

// secrets knows the values that must never be written anywhere: grant header values (and
// their longer words, so "Bearer X" also hides a bare X) and the run's proxy secret.
type secrets struct {
	values   []string
	replacer *strings.Replacer
}

func newSecrets(vals []string) *secrets {
	s := &secrets{}
	seen := map[string]bool{}
	add := func(v string) {
		if len(v) < 6 || seen[v] {
			return
		}
		seen[v] = true
		s.values = append(s.values, v)
	}
	for _, v := range vals {
		add(v)
		for _, f := range strings.Fields(v) {
			add(f)
		}
	}
	// Longest first, so a value is replaced before a word inside it.
	for i := 1; i < len(s.values); i++ {
		for j := i; j > 0 && len(s.values[j]) > len(s.values[j-1]); j-- {
			s.values[j], s.values[j-1] = s.values[j-1], s.values[j]
		}
	}
	var pairs []string
	for _, v := range s.values {
		pairs = append(pairs, v, redacted)
	}
	s.replacer = strings.NewReplacer(pairs...)
	return s
}

func (s *secrets) contains(v string) bool {
	for _, x := range s.values {
		if strings.Contains(v, x) {
			return true
		}
	}
	return false
}

// scrub removes secrets from text meant for the trace or a log and bounds its length.
func (s *secrets) scrub(text string) string {
	text = s.replacer.Replace(text)
	if len(text) > 512 {
		text = text[:512] + "..."
	}
	return text
}

// traceHeaders is h as recorded: first values, secret ones redacted.
func (s *secrets) traceHeaders(h http.Header, g *grant) map[string]string {
	if len(h) == 0 {
		return nil
	}
	m := make(map[string]string, len(h))
	for k, vs := range h {
		if len(vs) == 0 {
			continue
		}
		v := vs[0]
		if secretHeader(k) || g.sets(k) || s.contains(v) {
			v = redacted
		} else if len(v) > 256 {
			v = v[:256] + "..."
		}
		m[k] = v
	}
	return m
}

// limitedLog passes diagnostics on at a bounded rate (a hostile client must not be able to
// flood moatc's log) and scrubs secrets from them.
type limitedLog struct {
	mu      sync.Mutex
	logf    func(string, ...any)
	sec     *secrets
	tokens  float64
	last    time.Time
	dropped int
}

const (
	logBurst = 20
	logRate  = 1.0 // messages per second after the burst
)

func (l *limitedLog) printf(format string, args ...any) {
	if l.logf == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.last.IsZero() {
		l.tokens = logBurst
	} else {
		l.tokens = min(logBurst, l.tokens+now.Sub(l.last).Seconds()*logRate)
	}
	l.last = now
	if l.tokens < 1 {
		l.dropped++
		return
	}
	l.tokens--
	msg := l.sec.scrub(fmt.Sprintf(format, args...))
	if l.dropped > 0 {
		msg = fmt.Sprintf("%s (%d earlier messages dropped)", msg, l.dropped)
		l.dropped = 0
	}
	l.logf("proxy: %s", msg)
}

// logWriter turns net/http's error log into limitedLog lines.
type logWriter struct{ l *limitedLog }

func (w logWriter) Write(b []byte) (int, error) {
	w.l.printf("%s", strings.TrimSpace(string(b)))
	return len(b), nil
}
