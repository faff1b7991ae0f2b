package engine

import (
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
)

func TestWantsRestart(t *testing.T) {
	p := func(name container.RestartPolicyMode, max int) container.RestartPolicy {
		return container.RestartPolicy{Name: name, MaximumRetryCount: max}
	}
	cases := []struct {
		p           container.RestartPolicy
		code, count int
		want        bool
	}{
		{p("", 0), 1, 0, false},
		{p("no", 0), 1, 0, false},
		{p("always", 0), 0, 50, true},
		{p("unless-stopped", 0), 0, 0, true},
		{p("on-failure", 0), 0, 0, false},
		{p("on-failure", 0), 2, 100, true},
		{p("on-failure", 3), 2, 2, true},
		{p("on-failure", 3), 2, 3, false},
	}
	for _, c := range cases {
		if got := wantsRestart(c.p, c.code, c.count); got != c.want {
			t.Errorf("%+v code %d count %d: %v, want %v", c.p, c.code, c.count, got, c.want)
		}
	}
}

func TestRestartDelay(t *testing.T) {
	for streak, want := range map[int]time.Duration{0: 100 * time.Millisecond, 1: 200 * time.Millisecond, 3: 800 * time.Millisecond, 9: 51200 * time.Millisecond, 10: time.Minute, 1000: time.Minute} {
		if got := restartDelay(streak); got != want {
			t.Errorf("restartDelay(%d) = %v, want %v", streak, got, want)
		}
	}
}

func TestCheckRestartPolicy(t *testing.T) {
	bad := []container.HostConfig{
		{RestartPolicy: container.RestartPolicy{Name: "sometimes"}},
		{RestartPolicy: container.RestartPolicy{Name: "always", MaximumRetryCount: 2}},
		{RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: -1}},
		{RestartPolicy: container.RestartPolicy{Name: "always"}, AutoRemove: true},
	}
	for _, hc := range bad {
		if err := checkRestartPolicy(&hc); statusOf(err) != 400 {
			t.Errorf("%+v: %v; want 400", hc.RestartPolicy, err)
		}
	}
	for _, hc := range []container.HostConfig{{}, {AutoRemove: true, RestartPolicy: container.RestartPolicy{Name: "no"}}, {RestartPolicy: container.RestartPolicy{Name: "on-failure", MaximumRetryCount: 3}}} {
		if err := checkRestartPolicy(&hc); err != nil {
			t.Errorf("%+v: %v", hc.RestartPolicy, err)
		}
	}
}
