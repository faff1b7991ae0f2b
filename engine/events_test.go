package engine

import (
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"
)

func TestMatchEvent(t *testing.T) {
	die := events.Message{Type: events.ContainerEventType, Action: events.ActionDie,
		Actor: events.Actor{ID: "abc123", Attributes: map[string]string{"name": "web", "image": "busybox", "team": "a"}}}
	health := events.Message{Type: events.ContainerEventType, Action: "health_status: healthy", Actor: events.Actor{ID: "abc123"}}
	tag := events.Message{Type: events.ImageEventType, Action: events.ActionTag,
		Actor: events.Actor{ID: "sha256:1", Attributes: map[string]string{"name": "busybox"}}}
	cases := []struct {
		f    filters
		m    events.Message
		want bool
	}{
		{filters{}, die, true},
		{filters{"type": {"container"}}, die, true},
		{filters{"type": {"image"}}, die, false},
		{filters{"event": {"die", "start"}}, die, true},
		{filters{"event": {"start"}}, die, false},
		{filters{"event": {"health_status"}}, health, true},
		{filters{"container": {"web"}}, die, true},
		{filters{"container": {"abc"}}, die, true},
		{filters{"container": {"other"}}, die, false},
		{filters{"container": {"web"}}, tag, false},
		{filters{"image": {"busybox"}}, die, true},
		{filters{"image": {"busybox"}}, tag, true},
		{filters{"label": {"team=a"}}, die, true},
		{filters{"label": {"team=b"}}, die, false},
		{filters{"plugin": {"x"}}, die, false},
		{filters{"type": {"container"}, "event": {"die"}, "container": {"web"}}, die, true},
	}
	for i, c := range cases {
		if got := matchEvent(c.f, c.m); got != c.want {
			t.Errorf("case %d: matchEvent(%v, %s %s) = %v, want %v", i, c.f, c.m.Type, c.m.Action, got, c.want)
		}
	}
}

func TestEventTime(t *testing.T) {
	now := time.Unix(1000, 0)
	for in, want := range map[string]time.Time{
		"":                     {},
		"0":                    {},
		"10m":                  now.Add(-10 * time.Minute),
		"900":                  time.Unix(900, 0),
		"900.5":                time.Unix(900, 5e8),
		"2026-11-30T10:00:00Z": time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC),
	} {
		got, err := eventTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("eventTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := eventTime("yesterday", now); err == nil {
		t.Error("eventTime(yesterday): no error")
	}
}

func TestEventBusKeepsTheLatest(t *testing.T) {
	e := &Engine{}
	for i := 0; i < eventsKept+10; i++ {
		e.emit(events.ContainerEventType, events.ActionStart, "x", nil)
	}
	past, ch := e.events.subscribe(time.Unix(1, 0))
	defer e.events.unsubscribe(ch)
	if len(past) == 0 || len(past) > eventsKept {
		t.Fatalf("kept %d events, want 1..%d", len(past), eventsKept)
	}
	e.emit(events.ImageEventType, events.ActionTag, "y", nil)
	select {
	case m := <-ch:
		if m.Actor.ID != "y" || m.Scope != "local" || m.TimeNano == 0 {
			t.Errorf("got %+v", m)
		}
	default:
		t.Error("a subscriber did not get the new event")
	}
}
