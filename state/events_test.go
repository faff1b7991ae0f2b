package state

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func newStore(t *testing.T) *Store {
	t.Helper()
	home := t.TempDir()
	s, err := Open(filepath.Join(home, "runs"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func readEvents(t *testing.T, p string) []Event {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []Event
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, e)
	}
	return out
}

func summary(es []Event) string {
	var b []string
	for _, e := range es {
		s := e.Type + ":" + e.Name
		if e.ExitCode != nil {
			s += fmt.Sprintf("(%d)", *e.ExitCode)
		}
		b = append(b, s)
	}
	return strings.Join(b, " ")
}

// lifecycle takes a run through the states run.Manager gives it.
func lifecycle(t *testing.T, s *Store, name string, code int) *Run {
	t.Helper()
	r := &Run{ID: NewID(), Name: name, State: Created, Created: time.Now(), Spec: Spec{Image: "busybox"}}
	if err := s.Create(r); err != nil {
		t.Fatal(err)
	}
	set := func(fn func(*Run)) {
		if _, err := s.Update(r.ID, func(r *Run) error { fn(r); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	set(func(r *Run) { r.Pid = 7 })                            // no state change: no event
	set(func(r *Run) { r.State = Running })                    // started
	set(func(r *Run) { r.State = Running })                    // again: no second started
	set(func(r *Run) { r.State = Stopping })                   // stop requested: no event
	set(func(r *Run) { r.State, r.ExitCode = Stopped, &code }) // exited
	set(func(r *Run) { r.Error = "late note" })                // no event
	return r
}

func TestEventsWrittenOnEachTransition(t *testing.T) {
	s := newStore(t)
	r := lifecycle(t, s, "web", 3)
	if _, err := s.Update(r.ID, func(*Run) error { return fmt.Errorf("refused") }); err == nil {
		t.Fatal("update fn error not returned")
	}
	if err := s.Remove(r.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(r.ID); err != nil { // already gone: no second removed
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(s.dir), "events.jsonl"); s.EventsPath() != want {
		t.Fatalf("events log at %s, want %s (in moatc's home)", s.EventsPath(), want)
	}
	es := readEvents(t, s.EventsPath())
	if got, want := summary(es), "created:web started:web exited:web(3) removed:web"; got != want {
		t.Fatalf("events %q, want %q", got, want)
	}
	for _, e := range es {
		if e.ID != r.ID || e.Image != "busybox" || e.Time.IsZero() {
			t.Errorf("event %+v lacks the run's id, image or time", e)
		}
	}
	if es[2].State != Stopped {
		t.Errorf("exited event state %q, want %q", es[2].State, Stopped)
	}
}

func TestEventsFailedBeforeStartIsExited(t *testing.T) {
	s := newStore(t)
	r := &Run{ID: NewID(), Name: "bad", State: Created, Created: time.Now()}
	if err := s.Create(r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(r.ID, func(r *Run) error { r.State, r.Error = Failed, "no such image"; return nil }); err != nil {
		t.Fatal(err)
	}
	// A failed run reconciled later again (Failed -> Stopped) ended already: no second exited.
	if _, err := s.Update(r.ID, func(r *Run) error { r.State = Stopped; return nil }); err != nil {
		t.Fatal(err)
	}
	es := readEvents(t, s.EventsPath())
	if got := summary(es); got != "created:bad exited:bad" {
		t.Fatalf("events %q", got)
	}
	if es[1].Error != "no such image" || es[1].ExitCode != nil {
		t.Errorf("exited event %+v: want the error and no exit code", es[1])
	}
}

func TestEventsConcurrentWritersKeepWholeLines(t *testing.T) {
	s := newStore(t)
	s.capEvents = 2000 // rotate often while writers append
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := range 10 {
				s.emit(Event{Time: time.Now(), Type: EventCreated, ID: fmt.Sprintf("%02d%02d", i, j), Name: strings.Repeat("x", 50)})
			}
		}(i)
	}
	wg.Wait()
	// Every line of both files parses (readEvents fails on a torn one), and the old file
	// stays near the cap.
	old := readEvents(t, rotatedPath(s.EventsPath()))
	if len(old) == 0 {
		t.Fatal("the log never rotated")
	}
	if _, err := os.Stat(s.EventsPath()); err == nil {
		readEvents(t, s.EventsPath())
	}
	if fi, _ := os.Stat(rotatedPath(s.EventsPath())); fi.Size() > 2000+200 {
		t.Errorf("rotated log is %d bytes, cap 2000", fi.Size())
	}
}

func TestEventsFollowAcrossRotation(t *testing.T) {
	s := newStore(t)
	s.capEvents = 600
	s.emit(Event{Time: time.Now(), Type: EventCreated, ID: "before"}) // not replayed: no Since
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got := make(chan Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- s.Events(ctx, EventOptions{Poll: 5 * time.Millisecond, Filter: EventFilter{Types: []string{EventExited}}}, func(e Event) error {
			got <- e
			return nil
		})
	}()
	time.Sleep(50 * time.Millisecond) // the follower is at the end of the log
	const n = 40
	for i := range n {
		s.emit(Event{Time: time.Now(), Type: EventCreated, ID: fmt.Sprint("c", i)})
		s.emit(Event{Time: time.Now(), Type: EventExited, ID: fmt.Sprint(i), Name: strings.Repeat("n", 40)})
		if i%2 == 0 { // fewer lines than a rotation between two looks; see ...TwiceBetweenLooks
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i := range n {
		select {
		case e := <-got:
			if e.ID != fmt.Sprint(i) || e.Type != EventExited {
				t.Fatalf("event %d: %+v", i, e)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d events followed", i, n)
		}
	}
	if _, err := os.Stat(rotatedPath(s.EventsPath())); err != nil {
		t.Fatalf("the log never rotated, the test proves nothing: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestEventsRotatedTwiceBetweenLooks(t *testing.T) {
	s := newStore(t)
	s.capEvents = 250 // about 3 lines a file
	s.emit(Event{Type: EventCreated, ID: "a0"})
	tl := &tailer{path: s.EventsPath()}
	defer tl.close()
	if err := tl.openAtEnd(); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 5; i++ { // a1..a2 finish the open file, a3..a5 fill the next, both rotated
		s.emit(Event{Type: EventCreated, ID: fmt.Sprint("a", i), Name: strings.Repeat("m", 30)})
	}
	s.emit(Event{Type: EventCreated, ID: "a6"})
	var ids []string
	if _, err := tl.drain(func(e Event) (bool, error) { ids = append(ids, e.ID); return false, nil }); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ids, ","); got != "a1,a2,a3,a4,a5,a6" {
		t.Fatalf("followed %s, want a1..a6", got)
	}
}

func TestEventsSinceUntilReplay(t *testing.T) {
	s := newStore(t)
	s.capEvents = 1200 // about 13 of the lines below: r00.. rotated, ..r19 live
	base := time.Now().Add(-time.Hour).UTC()
	for i := range 20 {
		s.emit(Event{Time: base.Add(time.Duration(i) * time.Minute), Type: EventStarted, ID: fmt.Sprintf("r%02d", i), Name: fmt.Sprint("n", i)})
	}
	if _, err := os.Stat(rotatedPath(s.EventsPath())); err != nil {
		t.Fatal("no rotation: the replay of the old file is not tested")
	}
	var ids []string
	err := s.Events(context.Background(), EventOptions{
		Since: base.Add(10 * time.Minute), Until: base.Add(15 * time.Minute),
	}, func(e Event) error { ids = append(ids, e.ID); return nil })
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ids, ","); got != "r10,r11,r12,r13,r14,r15" {
		t.Fatalf("replayed %s, want r10..r15 (across the rotation, then stop at --until)", got)
	}
	if old := readEvents(t, rotatedPath(s.EventsPath())); old[len(old)-1].ID < "r10" || old[len(old)-1].ID >= "r15" {
		t.Fatalf("rotation after %s: the range does not span both files", old[len(old)-1].ID)
	}
	ids = nil
	f, _ := ParseEventFilters([]string{"run=n18", "run=r19"})
	if err := s.Events(context.Background(), EventOptions{Since: base, Until: time.Now(), Filter: f},
		func(e Event) error { ids = append(ids, e.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ids, ","); got != "r18,r19" {
		t.Fatalf("run filter gave %s, want r18,r19", got)
	}
}

func TestParseEventFiltersRejects(t *testing.T) {
	for _, bad := range []string{"run", "run=", "type=died", "color=red", "=x"} {
		if _, err := ParseEventFilters([]string{bad}); err == nil {
			t.Errorf("filter %q accepted", bad)
		}
	}
	f, err := ParseEventFilters([]string{"type=started", "type=exited", "run=web"})
	if err != nil {
		t.Fatal(err)
	}
	for e, want := range map[Event]bool{
		{Type: EventStarted, Name: "web"}:          true,
		{Type: EventExited, ID: "webabc"}:          true,
		{Type: EventCreated, Name: "web"}:          false,
		{Type: EventStarted, Name: "db", ID: "x1"}: false,
	} {
		if f.Match(e) != want {
			t.Errorf("match %+v = %v, want %v", e, !want, want)
		}
	}
}

func TestParseEventTime(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"10m":                  now.Add(-10 * time.Minute),
		"0s":                   now,
		"2026-04-30T08:00:00Z": time.Date(2026, 4, 30, 8, 0, 0, 0, time.UTC),
		"1700000000":           time.Unix(1700000000, 0),
		"2026-04-30":           time.Date(2026, 4, 30, 0, 0, 0, 0, time.Local),
	} {
		got, err := ParseEventTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseEventTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-5m", "2026-13-01", "-17"} {
		if _, err := ParseEventTime(bad, now); err == nil {
			t.Errorf("ParseEventTime(%q) accepted", bad)
		}
	}
}
