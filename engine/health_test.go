package engine

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/types/container"
)

func TestHealthArgs(t *testing.T) {
	if a, err := healthArgs([]string{"CMD", "pg_isready", "-U", "x"}); err != nil || !slices.Equal(a, []string{"pg_isready", "-U", "x"}) {
		t.Errorf("CMD: %q %v", a, err)
	}
	if a, err := healthArgs([]string{"CMD-SHELL", "curl -f localhost || exit 1"}); err != nil || !slices.Equal(a, []string{"/bin/sh", "-c", "curl -f localhost || exit 1"}) {
		t.Errorf("CMD-SHELL: %q %v", a, err)
	}
	for _, bad := range [][]string{{"CMD"}, {"RUN", "x"}, {"CMD-SHELL"}} {
		if _, err := healthArgs(bad); statusOf(err) != 400 {
			t.Errorf("%q: %v; want 400", bad, err)
		}
	}
}

func TestCheckHealthcheck(t *testing.T) {
	for _, ok := range []*container.HealthConfig{nil, {Test: []string{"NONE"}}, {}, {Test: []string{"CMD", "true"}, Interval: time.Second}} {
		if err := checkHealthcheck(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
	for _, bad := range []*container.HealthConfig{{Test: []string{"CMD"}}, {Test: []string{"CMD", "x"}, Interval: time.Microsecond}, {Test: []string{"CMD", "x"}, Retries: -1}} {
		if err := checkHealthcheck(bad); statusOf(err) != 400 {
			t.Errorf("%+v: %v; want 400", bad, err)
		}
	}
}

func TestMergeHealthcheck(t *testing.T) {
	img := &container.HealthConfig{Test: []string{"CMD", "img"}, Interval: time.Minute, Retries: 5}
	got := mergeHealthcheck(&container.HealthConfig{Interval: time.Second}, img)
	if !slices.Equal(got.Test, img.Test) || got.Interval != time.Second || got.Retries != 5 {
		t.Errorf("merge: %+v", got)
	}
	if got := mergeHealthcheck(nil, img); got == img || got.Interval != time.Minute {
		t.Errorf("the image's alone: %+v (must be a copy)", got)
	}
	if got := mergeHealthcheck(&container.HealthConfig{Test: []string{"NONE"}}, img); !slices.Equal(got.Test, []string{"NONE"}) {
		t.Errorf("NONE must disable the image's: %+v", got)
	}
	if newHealth(&container.Config{Healthcheck: &container.HealthConfig{Test: []string{"NONE"}}}) != nil {
		t.Error("NONE gives a health state")
	}
}

func TestCappedBuffer(t *testing.T) {
	b := &cappedBuffer{max: 5}
	n, _ := b.Write([]byte("abc"))
	b.Write([]byte("defgh"))
	if n != 3 || b.String() != "abcde" {
		t.Errorf("%d %q", n, b.String())
	}
	if strings.Contains(b.String(), "f") {
		t.Error("over the cap")
	}
}
