package engine

import (
	"testing"
	"time"

	"github.com/moatc/moatc/run"
)

func TestPruneUntil(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for in, want := range map[string]time.Time{
		"1h":                   now.Add(-time.Hour),
		"1600000000":           time.Unix(1_600_000_000, 0),
		"1600000000.5":         time.Unix(1_600_000_000, 500_000_000),
		"2024-01-02T03:04:05Z": time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC),
		"2024-01-02":           time.Date(2024, 1, 2, 0, 0, 0, 0, time.UTC),
	} {
		got, err := pruneUntil(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("pruneUntil(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "12x", "1.x"} {
		if _, err := pruneUntil(bad, now); err == nil {
			t.Errorf("pruneUntil(%q) accepted", bad)
		}
	}
}

func TestPruneLabelsMatch(t *testing.T) {
	l := map[string]string{"a": "1", "b": ""}
	for _, c := range []struct {
		want []string
		has  bool
		ok   bool
	}{
		{nil, true, true},
		{[]string{"a"}, true, true},
		{[]string{"a=1", "b"}, true, true},
		{[]string{"a=2"}, true, false},
		{[]string{"c"}, true, false},
		{[]string{"c"}, false, true},
		{[]string{"a=1"}, false, false},
		{[]string{"a=2"}, false, true},
	} {
		f, key := filters{"label": c.want}, "label"
		got := f.matchLabel(l)
		if !c.has {
			f, key = filters{"label!": c.want}, "label!"
			got = f.matchNotLabel(l)
		}
		if got != c.ok {
			t.Errorf("%s=%v on %v: %v", key, c.want, l, got)
		}
	}
}

func TestTopResponse(t *testing.T) {
	r := topResponse([]run.Process{{PID: 1, PPID: 0, UID: 0, Time: "00:00:01", Cmd: "sleep 300"}, {PID: 7, PPID: 1, UID: -1, Time: "00:00:00", Cmd: "sh"}})
	if len(r.Titles) != 5 || len(r.Processes) != 2 || r.Processes[0][4] != "sleep 300" || r.Processes[1][0] != "?" || r.Processes[1][1] != "7" {
		t.Errorf("top: %+v", r)
	}
	if r := topResponse(nil); r.Processes == nil {
		t.Error("no processes must be an empty list, not null")
	}
}
