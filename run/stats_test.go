package run

import (
	"testing"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/moatc/moatc/state"
)

func metric(t *testing.T, at time.Time, v any) *types.Metric {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(v)
	if err != nil {
		t.Fatal(err)
	}
	return &types.Metric{Timestamp: timestamppb.New(at), Data: a}
}

func TestStatsFromCgroupV1(t *testing.T) {
	t0 := time.Unix(1000, 0)
	m := func(cpu uint64, at time.Time) *types.Metric {
		return metric(t, at, &v1.Metrics{
			CPU:    &v1.CPUStat{Usage: &v1.CPUUsage{Total: cpu}},
			Memory: &v1.MemoryStat{TotalInactiveFile: 1 << 20, Usage: &v1.MemoryEntry{Usage: 5 << 20, Limit: 1 << 62}},
			Pids:   &v1.PidsStat{Current: 3},
		})
	}
	a, err := metricSample(m(1e9, t0))
	if err != nil {
		t.Fatal(err)
	}
	b, err := metricSample(m(1.5e9, t0.Add(time.Second)))
	if err != nil {
		t.Fatal(err)
	}
	r := &state.Run{ID: "abc", Spec: state.Spec{Runtime: "runc"}}
	st := makeStats(r, a, b, 8<<30)
	// Half a CPU for a second; the unlimited cgroup is bounded by the host's memory.
	if st.CPUPercent != 50 || st.MemoryUsage != 4<<20 || st.MemoryLimit != 8<<30 || st.Pids != 3 {
		t.Errorf("got %+v", st)
	}
	// The run's --memory stands in when the cgroup does not say it.
	r.Spec.Memory = 96 << 20
	if st := makeStats(r, a, b, 8<<30); st.MemoryLimit != 96<<20 || st.MemoryPercent == 0 {
		t.Errorf("with --memory: %+v", st)
	}
}

func TestStatsFromCgroupV2(t *testing.T) {
	s, err := metricSample(metric(t, time.Unix(1, 0), &v2.Metrics{
		CPU:    &v2.CPUStat{UsageUsec: 2000},
		Memory: &v2.MemoryStat{Usage: 10 << 20, UsageLimit: 64 << 20, InactiveFile: 2 << 20},
		Pids:   &v2.PidsStat{Current: 2},
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.cpu != 2e6 || s.mem != 8<<20 || s.limit != 64<<20 || s.pids != 2 {
		t.Errorf("got %+v", s)
	}
	if st := makeStats(&state.Run{}, s, s, 8<<30); st.MemoryLimit != 64<<20 {
		t.Errorf("limit: %+v", st)
	}
	if _, err := metricSample(&types.Metric{}); err == nil {
		t.Error("no data: no error")
	}
	if _, err := metricSample(metric(t, time.Unix(1, 0), &v1.PidsStat{})); err == nil {
		t.Error("an unknown type: no error")
	}
}
