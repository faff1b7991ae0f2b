package engine

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/events"
)

func init() {
	route("GET /events", eventsGet)
}

// eventsKept is how many past events GET /events?since= can replay. Docker keeps 256; a few
// more cost nothing and let a slow test see the whole of a short session.
const eventsKept = 1024

// eventBus keeps the last events and hands new ones to the streams following them.
type eventBus struct {
	mu   sync.Mutex
	past []events.Message
	subs map[chan events.Message]struct{}
}

// emit records an event of an object (a container, image, network, volume) and sends it to
// every /events stream. attrs are Docker's: "name", "image", labels... (may be nil).
func (e *Engine) emit(typ events.Type, action events.Action, id string, attrs map[string]string) {
	now := time.Now()
	if attrs == nil {
		attrs = map[string]string{}
	}
	m := events.Message{Type: typ, Action: action, Actor: events.Actor{ID: id, Attributes: attrs},
		Scope: "local", Time: now.Unix(), TimeNano: now.UnixNano()}
	b := &e.events
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.past) >= eventsKept {
		b.past = append(b.past[:0], b.past[len(b.past)-eventsKept/2:]...)
	}
	b.past = append(b.past, m)
	for ch := range b.subs {
		select {
		case ch <- m:
		default: // a stream that does not read loses events rather than holding up the engine
		}
	}
}

// containerEvent emits an event of c with Docker's attributes: its name, image and labels.
func (e *Engine) containerEvent(action events.Action, rec record, extra map[string]string) {
	attrs := map[string]string{"name": rec.Name, "image": rec.Image}
	if rec.Config != nil {
		for k, v := range rec.Config.Labels {
			attrs[k] = v
		}
	}
	for k, v := range extra {
		attrs[k] = v
	}
	e.emit(events.ContainerEventType, action, rec.ID, attrs)
}

// subscribe returns the events since (zero: none) and a channel of the ones to come.
func (b *eventBus) subscribe(since time.Time) ([]events.Message, chan events.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var past []events.Message
	if !since.IsZero() {
		for _, m := range b.past {
			if m.TimeNano >= since.UnixNano() {
				past = append(past, m)
			}
		}
	}
	if b.subs == nil {
		b.subs = map[chan events.Message]struct{}{}
	}
	ch := make(chan events.Message, 256)
	b.subs[ch] = struct{}{}
	return past, ch
}

func (b *eventBus) unsubscribe(ch chan events.Message) {
	b.mu.Lock()
	delete(b.subs, ch)
	b.mu.Unlock()
}

var eventFilters = []string{"type", "event", "container", "image", "label", "network", "volume",
	"daemon", "plugin", "service", "node", "secret", "config", "scope"}

// eventsGet is GET /events?since=&until=&filters=: the past events asked for, then the new ones
// as they come, one JSON object a line, until `until` or the client leaves.
func eventsGet(e *Engine, w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f, err := parseFilters(q.Get("filters"), eventFilters...)
	if err != nil {
		return err
	}
	now := time.Now()
	since, err := eventTime(q.Get("since"), now)
	if err != nil {
		return err
	}
	until, err := eventTime(q.Get("until"), now)
	if err != nil {
		return err
	}
	if !since.IsZero() && !until.IsZero() && until.Before(since) {
		return invalid("until (%s) is before since (%s)", q.Get("until"), q.Get("since"))
	}
	past, ch := e.events.subscribe(since)
	defer e.events.unsubscribe(ch)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	enc := json.NewEncoder(w)
	send := func(m events.Message) error {
		if !matchEvent(f, m) {
			return nil
		}
		if err := enc.Encode(m); err != nil {
			return err
		}
		return rc.Flush()
	}
	for _, m := range past {
		if !until.IsZero() && m.TimeNano > until.UnixNano() {
			return nil
		}
		if send(m) != nil {
			return nil
		}
	}
	var deadline <-chan time.Time
	if !until.IsZero() {
		if !until.After(now) {
			return nil
		}
		t := time.NewTimer(until.Sub(now))
		defer t.Stop()
		deadline = t.C
	}
	for {
		select {
		case m := <-ch:
			if send(m) != nil {
				return nil
			}
		case <-deadline:
			return nil
		case <-r.Context().Done():
			return nil
		}
	}
}

// eventTime reads since= and until=: Unix seconds (with a fraction), RFC 3339, or a duration
// back from now ("10m"), as the CLI sends them.
func eventTime(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil && s != "0" {
		return now.Add(-d), nil
	}
	return unixTime(s)
}

// matchEvent applies Docker's event filters: every key given must match.
func matchEvent(f filters, m events.Message) bool {
	attr := m.Actor.Attributes
	is := func(t events.Type) bool { return m.Type == t }
	byRef := func(t events.Type, key string) bool {
		return f.matchAny(key, func(v string) bool {
			return is(t) && (m.Actor.ID == v || strings.HasPrefix(m.Actor.ID, v) || attr["name"] == v)
		})
	}
	return f.matchAny("type", func(v string) bool { return string(m.Type) == v }) &&
		f.matchAny("event", func(v string) bool {
			return string(m.Action) == v || strings.HasPrefix(string(m.Action), v+":")
		}) &&
		byRef(events.ContainerEventType, "container") &&
		f.matchAny("image", func(v string) bool {
			return (is(events.ImageEventType) && (m.Actor.ID == v || attr["name"] == v)) || attr["image"] == v
		}) &&
		byRef(events.NetworkEventType, "network") &&
		byRef(events.VolumeEventType, "volume") &&
		f.matchAny("scope", func(v string) bool { return m.Scope == v }) &&
		f.matchLabel(attr) &&
		f.matchAny("daemon", func(string) bool { return is(events.DaemonEventType) }) &&
		len(f["plugin"])+len(f["service"])+len(f["node"])+len(f["secret"])+len(f["config"]) == 0
}
