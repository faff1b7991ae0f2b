package state

import (
	"strings"
	"testing"
)

func TestRunFilter(t *testing.T) {
	runs := []*Run{
		{ID: "aaa111", Name: "web-1", State: Running, Spec: Spec{Labels: map[string]string{"app": "web", "tier": "front"}}},
		{ID: "aaa222", Name: "web-2", State: Stopped, Spec: Spec{Labels: map[string]string{"app": "web"}}},
		{ID: "bbb333", Name: "db", State: Failed, Spec: Spec{Labels: map[string]string{"app": "db"}}},
		{ID: "ccc444", Name: "job", State: Created},
	}
	for _, c := range []struct {
		filters []string
		want    string
	}{
		{nil, "web-1 web-2 db job"},
		{[]string{"state=running"}, "web-1"},
		{[]string{"state=exited"}, "web-2 db"},
		{[]string{"state=running", "state=created"}, "web-1 job"}, // same key: OR
		{[]string{"label=app=web", "state=stopped"}, "web-2"},     // different keys: AND
		{[]string{"label=tier"}, "web-1"},                         // the key alone
		{[]string{"label=app=web", "label=app=db"}, "web-1 web-2 db"},
		{[]string{"label=app=we"}, ""}, // values match whole
		{[]string{"name=web-*"}, "web-1 web-2"},
		{[]string{"name=web"}, ""},
		{[]string{"id=aaa"}, "web-1 web-2"},
		{[]string{"id=aaa", "name=db"}, ""},
	} {
		f, err := ParseRunFilters(c.filters)
		if err != nil {
			t.Fatalf("%v: %v", c.filters, err)
		}
		var names []string
		for _, r := range f.Filter(runs) {
			names = append(names, r.Name)
		}
		if got := strings.Join(names, " "); got != c.want {
			t.Errorf("%v: %q, want %q", c.filters, got, c.want)
		}
	}
}

func TestRunFilterRejects(t *testing.T) {
	for _, bad := range []string{"state", "state=", "state=dead", "color=red", "label=", "label==x", "name=[", "=x"} {
		if _, err := ParseRunFilters([]string{bad}); err == nil {
			t.Errorf("filter %q accepted", bad)
		}
	}
}
