package run

import (
	"testing"

	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/state"
)

func TestPoolClass(t *testing.T) {
	for _, c := range []struct {
		spec state.Spec
		want pool.Class
		ok   bool
	}{
		{state.Spec{Runtime: state.GVisor, Network: state.NetworkDefault, Pids: 4096}, pool.Class{Runtime: "gvisor", Pids: 4096}, true},
		// systrap is the default platform: the same sandbox.
		{state.Spec{Runtime: state.GVisor, Platform: "systrap", Memory: 1 << 30, CPUs: 2}, pool.Class{Runtime: "gvisor", Memory: 1 << 30, CPUs: 2}, true},
		{state.Spec{Runtime: state.GVisor, Platform: "ptrace"}, pool.Class{Runtime: "gvisor", Platform: "ptrace"}, true},
		// runc members are networks: the run's limits go on its own container.
		{state.Spec{Runtime: state.Runc, Memory: 1 << 30, Pids: 10}, pool.Class{Runtime: "runc"}, true},
		{state.Spec{Runtime: state.GVisor, Network: state.NetworkNone}, pool.Class{}, false},
		{state.Spec{Runtime: state.GVisor, Docker: "dind"}, pool.Class{}, false},
		{state.Spec{Runtime: state.GVisor, Debug: true}, pool.Class{}, false},
	} {
		got, ok := PoolClass(c.spec)
		if got != c.want || ok != c.ok {
			t.Errorf("%+v: %+v %v, want %+v %v", c.spec, got, ok, c.want, c.ok)
		}
	}
}
