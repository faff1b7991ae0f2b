package state

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Event types: a run's life as `moatc events` shows it.
const (
	EventCreated = "created" // the record was written
	EventStarted = "started" // the task started
	EventExited  = "exited"  // the run ended (stopped or failed); ExitCode when known
	EventRemoved = "removed" // the record was removed
)

// EventTypes lists every event type, in the order of a run's life.
var EventTypes = []string{EventCreated, EventStarted, EventExited, EventRemoved}

// Event is one line of the events log.
type Event struct {
	Time     time.Time `json:"time"`
	Type     string    `json:"type"`
	ID       string    `json:"id"`
	Name     string    `json:"name,omitempty"`
	Image    string    `json:"image,omitempty"`
	State    string    `json:"state,omitempty"` // the record's state after the event
	ExitCode *int      `json:"exit_code,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// eventsCap is the size past which the log is rotated to events.1.jsonl (one old file kept).
const eventsCap = 4 << 20

// EventsPath returns the events log: events.jsonl beside the runs directory (in moatc's home).
func (s *Store) EventsPath() string {
	if s.events != "" {
		return s.events
	}
	return filepath.Join(filepath.Dir(s.dir), "events.jsonl")
}

// rotatedPath is where the log goes when it reaches its cap.
func rotatedPath(p string) string { return strings.TrimSuffix(p, ".jsonl") + ".1.jsonl" }

func newEvent(typ string, r *Run) Event {
	e := Event{Time: time.Now().UTC(), Type: typ, ID: r.ID, Name: r.Name, Image: r.Spec.Image, State: r.State}
	if typ == EventExited {
		e.ExitCode, e.Error = r.ExitCode, r.Error
	}
	if typ == EventRemoved {
		e.State = ""
	}
	return e
}

// transition names the event a record change makes, if any.
func transition(old, cur string) string {
	ended := func(s string) bool { return s == Stopped || s == Failed }
	switch {
	case cur == Running && old != Running && !ended(old):
		return EventStarted
	case ended(cur) && !ended(old):
		return EventExited
	}
	return ""
}

// emit appends e to the events log. The log is a record for people and scripts: failing to
// write it must not fail the run's own change, so a failure is only reported on stderr.
func (s *Store) emit(e Event) {
	if err := s.appendEvent(e); err != nil {
		fmt.Fprintf(os.Stderr, "moatc: warning: recording event %s of run %s: %v\n", e.Type, e.ID, err)
	}
}

func (s *Store) appendEvent(e Event) error {
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	p := s.EventsPath()
	// Writers in several processes: the lock keeps a rotation from racing an append.
	unlock, err := Lock(p + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n')) // one write per line: a reader never sees half of one
	fi, serr := f.Stat()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if serr == nil && fi.Size() >= s.eventsCap() {
		return os.Rename(p, rotatedPath(p))
	}
	return nil
}

func (s *Store) eventsCap() int64 {
	if s.capEvents > 0 {
		return s.capEvents
	}
	return eventsCap
}

// EventFilter selects events; each non-empty list must match (values within one list OR).
type EventFilter struct {
	Runs  []string // id, id prefix or name
	Types []string
}

// Match reports whether e passes the filter.
func (f EventFilter) Match(e Event) bool {
	if len(f.Types) > 0 && !contains(f.Types, e.Type) {
		return false
	}
	if len(f.Runs) == 0 {
		return true
	}
	for _, r := range f.Runs {
		if r != "" && (r == e.Name || strings.HasPrefix(e.ID, r)) {
			return true
		}
	}
	return false
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// ParseEventFilters reads --filter values: run=NAME|ID and type=TYPE.
func ParseEventFilters(specs []string) (EventFilter, error) {
	var f EventFilter
	for _, s := range specs {
		k, v, ok := strings.Cut(s, "=")
		switch {
		case !ok || v == "":
			return f, fmt.Errorf("filter %q is not KEY=VALUE: use run=NAME|ID or type=%s", s, strings.Join(EventTypes, "|"))
		case k == "run":
			f.Runs = append(f.Runs, v)
		case k == "type":
			if !contains(EventTypes, v) {
				return f, fmt.Errorf("filter %q: no event type %q (types: %s)", s, v, strings.Join(EventTypes, ", "))
			}
			f.Types = append(f.Types, v)
		default:
			return f, fmt.Errorf("filter %q: unknown key %q (keys: run, type)", s, k)
		}
	}
	return f, nil
}

// EventOptions say which events Events delivers.
type EventOptions struct {
	Since  time.Time // replay logged events from this time on; zero: only new ones
	Until  time.Time // stop at this time; zero: until ctx ends
	Filter EventFilter
	Poll   time.Duration // how often to look for new lines; default 200ms
}

// Events calls fn with each event that matches, in the order they were logged: first the
// logged ones from Since, then new ones as they come, until Until passes or ctx ends. An
// Until in the past only replays.
func (s *Store) Events(ctx context.Context, o EventOptions, fn func(Event) error) error {
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	deliver := func(e Event) (bool, error) {
		if !o.Until.IsZero() && e.Time.After(o.Until) {
			return true, nil
		}
		if (o.Since.IsZero() || !e.Time.Before(o.Since)) && o.Filter.Match(e) {
			return false, fn(e)
		}
		return false, nil
	}
	t := &tailer{path: s.EventsPath()}
	defer t.close()
	if o.Since.IsZero() {
		if err := t.openAtEnd(); err != nil {
			return err
		}
	} else if done, err := replayFile(rotatedPath(t.path), deliver); done || err != nil {
		return err
	}
	for {
		done, err := t.drain(deliver)
		if done || err != nil {
			return err
		}
		if !o.Until.IsZero() && !time.Now().Before(o.Until) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Poll):
		}
	}
}

// replayFile delivers every line of a closed (rotated) log.
func replayFile(p string, deliver func(Event) (bool, error)) (bool, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading events: %w", err)
	}
	defer f.Close()
	_, done, err := readLines(f, deliver)
	return done, err
}

// readLines delivers the complete lines of r and returns how many bytes they took; a line
// still being written (no newline yet) is left for the next read. Lines that do not parse
// (the log is moatc's, but a damaged one must not stop the stream) are skipped.
func readLines(r io.Reader, deliver func(Event) (bool, error)) (int64, bool, error) {
	br := bufio.NewReader(r)
	var n int64
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			if err == io.EOF {
				return n, false, nil
			}
			return n, false, fmt.Errorf("reading events: %w", err)
		}
		n += int64(len(line))
		var e Event
		if json.Unmarshal(line, &e) != nil {
			continue
		}
		if done, err := deliver(e); done || err != nil {
			return n, done, err
		}
	}
}

// tailer follows the live log across rotations.
type tailer struct {
	path string
	f    *os.File
	off  int64
}

func (t *tailer) close() {
	if t.f != nil {
		t.f.Close()
	}
}

func (t *tailer) openAtEnd() error {
	if err := t.open(); err != nil || t.f == nil {
		return err
	}
	off, err := t.f.Seek(0, io.SeekEnd)
	t.off = off
	return err
}

func (t *tailer) open() error {
	f, err := os.Open(t.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil // no event yet: the first one creates it
	}
	if err != nil {
		return fmt.Errorf("reading events: %w", err)
	}
	t.f, t.off = f, 0
	return nil
}

// drain delivers what was appended since the last call. When the log was rotated, the rest
// of the old file (still open) comes first, then the new file from its start.
func (t *tailer) drain(deliver func(Event) (bool, error)) (bool, error) {
	for {
		if t.f == nil {
			if err := t.open(); err != nil || t.f == nil {
				return false, err
			}
		}
		if _, err := t.f.Seek(t.off, io.SeekStart); err != nil {
			return false, fmt.Errorf("reading events: %w", err)
		}
		n, done, err := readLines(t.f, deliver)
		t.off += n
		if done || err != nil {
			return done, err
		}
		if !t.rotated() {
			return false, nil
		}
		// Lines appended to the old file after the read above and before its rename.
		if _, err := t.f.Seek(t.off, io.SeekStart); err == nil {
			if _, done, err := readLines(t.f, deliver); done || err != nil {
				return done, err
			}
		}
		// Rotated twice since the last look: the file in between is the rotated one now.
		if done, err := t.between(deliver); done || err != nil {
			return done, err
		}
		t.f.Close()
		t.f = nil
	}
}

// between delivers the rotated file when it is not the one open (the log rotated again
// after it); a third rotation between two looks would lose a whole file, at a few MB each.
func (t *tailer) between(deliver func(Event) (bool, error)) (bool, error) {
	f, err := os.Open(rotatedPath(t.path))
	if err != nil {
		return false, nil
	}
	defer f.Close()
	if sameFile(f, t.f) {
		return false, nil
	}
	_, done, err := readLines(f, deliver)
	return done, err
}

func sameFile(a, b *os.File) bool {
	x, err1 := a.Stat()
	y, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(x, y)
}

// rotated reports whether the path now names another file than the one open.
func (t *tailer) rotated() bool {
	cur, err := os.Open(t.path)
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	defer cur.Close()
	return !sameFile(cur, t.f)
}

// ParseEventTime reads --since/--until: a duration back from now (10m, 1h30m), an RFC 3339
// time, a date (2006-01-02, local) or Unix seconds.
func ParseEventTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: give a positive duration back from now, such as 10m", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if secs, err := strconv.ParseInt(s, 10, 64); err == nil && secs >= 0 {
		return time.Unix(secs, 0), nil
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use a duration (10m, 2h), an RFC 3339 time (2006-01-02T15:04:05Z), a date (2006-01-02) or Unix seconds", s)
}

// String is the event's line in `moatc events`.
func (e Event) String() string {
	attrs := []string{}
	if e.Name != "" {
		attrs = append(attrs, "name="+e.Name)
	}
	if e.Image != "" {
		attrs = append(attrs, "image="+e.Image)
	}
	if e.ExitCode != nil {
		attrs = append(attrs, fmt.Sprintf("exit_code=%d", *e.ExitCode))
	}
	if e.Error != "" {
		attrs = append(attrs, fmt.Sprintf("error=%q", e.Error))
	}
	return fmt.Sprintf("%s run %s %s (%s)", e.Time.Local().Format(time.RFC3339Nano), e.Type, e.ID, strings.Join(attrs, ", "))
}
