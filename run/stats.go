package run

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/containerd/api/types"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"

	"github.com/moatc/moatc/state"
)

// Stats is one run's resource use, as `moatc stats` shows it.
type Stats struct {
	Run     string `json:"run"`
	Name    string `json:"name"`
	Runtime string `json:"runtime"`
	// CPUPercent is CPU time used over the sampling interval, in percent of one CPU (200 is
	// two CPUs busy), as Docker counts.
	CPUPercent  float64 `json:"cpu_percent"`
	MemoryUsage uint64  `json:"memory_usage"` // bytes, page cache not in active use left out
	// MemoryLimit is the run's --memory, else the host's memory.
	MemoryLimit   uint64  `json:"memory_limit"`
	MemoryPercent float64 `json:"memory_percent"`
	Pids          uint64  `json:"pids"`
}

// DefaultStatsInterval is how long CPU use is measured over.
const DefaultStatsInterval = time.Second

// sample is one reading of a task's cgroup figures.
type sample struct {
	cpu        uint64 // ns used in total
	mem, limit uint64
	pids       uint64
	at         time.Time
}

// Stats reads the resource use of the given runs, all running runs when refs is empty. CPU
// use is measured over interval.
func (m *Manager) Stats(ctx context.Context, refs []string, interval time.Duration) ([]Stats, error) {
	type target struct {
		r     *state.Run
		task  containerd.Task
		first sample
	}
	var targets []*target
	if len(refs) == 0 {
		runs, err := m.Store.List()
		if err != nil {
			return nil, err
		}
		for _, r := range runs {
			if r.State == state.Running {
				refs = append(refs, r.ID)
			}
		}
		// Runs found by listing may end before they are read: left out, not an error.
		for _, ref := range refs {
			if r, task, err := m.runningTask(ctx, ref, "reading stats"); err == nil {
				targets = append(targets, &target{r: r, task: task})
			}
		}
	} else {
		for _, ref := range refs {
			r, task, err := m.runningTask(ctx, ref, "reading stats")
			if err != nil {
				return nil, err
			}
			targets = append(targets, &target{r: r, task: task})
		}
	}
	for _, t := range targets {
		s, err := taskSample(ctx, t.task)
		if err != nil {
			return nil, fmt.Errorf("reading the stats of run %s: %w", t.r.ID, err)
		}
		t.first = s
	}
	if len(targets) > 0 && interval > 0 {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
	}
	host := hostMemory()
	out := []Stats{}
	for _, t := range targets {
		s, err := taskSample(ctx, t.task)
		if err != nil {
			if len(refs) > 0 {
				return nil, fmt.Errorf("reading the stats of run %s: %w", t.r.ID, err)
			}
			continue
		}
		out = append(out, makeStats(t.r, t.first, s, host))
	}
	return out, nil
}

func taskSample(ctx context.Context, task containerd.Task) (sample, error) {
	mt, err := task.Metrics(ctx)
	if err != nil {
		return sample{}, err
	}
	return metricSample(mt)
}

// metricSample reads the cgroup figures the shim returns: cgroup v1's or v2's, whichever the
// host has. gVisor's shim returns the sandbox's, in the same types.
func metricSample(mt *types.Metric) (sample, error) {
	if mt == nil || mt.Data == nil {
		return sample{}, fmt.Errorf("the shim returned no metrics")
	}
	data, err := typeurl.UnmarshalAny(mt.Data)
	if err != nil {
		return sample{}, fmt.Errorf("reading metrics: %w", err)
	}
	s := sample{at: time.Now()}
	if mt.Timestamp != nil && mt.Timestamp.IsValid() {
		s.at = mt.Timestamp.AsTime()
	}
	switch d := data.(type) {
	case *v1.Metrics:
		if d.CPU != nil && d.CPU.Usage != nil {
			s.cpu = d.CPU.Usage.Total
		}
		if d.Memory != nil && d.Memory.Usage != nil {
			s.mem, s.limit = d.Memory.Usage.Usage, d.Memory.Usage.Limit
			// As Docker: the inactive page cache can be reclaimed, it is not the run's use.
			if inactive := d.Memory.TotalInactiveFile; inactive < s.mem {
				s.mem -= inactive
			}
		}
		if d.Pids != nil {
			s.pids = d.Pids.Current
		}
	case *v2.Metrics:
		if d.CPU != nil {
			s.cpu = d.CPU.UsageUsec * 1000
		}
		if d.Memory != nil {
			s.mem, s.limit = d.Memory.Usage, d.Memory.UsageLimit
			if inactive := d.Memory.InactiveFile; inactive < s.mem {
				s.mem -= inactive
			}
		}
		if d.Pids != nil {
			s.pids = d.Pids.Current
		}
	default:
		return sample{}, fmt.Errorf("reading metrics: unknown type %T", data)
	}
	return s, nil
}

func makeStats(r *state.Run, a, b sample, host uint64) Stats {
	st := Stats{Run: r.ID, Name: r.Name, Runtime: string(r.Spec.Runtime), MemoryUsage: b.mem, Pids: b.pids}
	if dt := b.at.Sub(a.at); dt > 0 && b.cpu >= a.cpu {
		st.CPUPercent = float64(b.cpu-a.cpu) / float64(dt.Nanoseconds()) * 100
	}
	// An unlimited cgroup says so with a huge number; the host's memory is the real bound.
	st.MemoryLimit = host
	switch {
	case b.limit > 0 && (host == 0 || b.limit < host):
		st.MemoryLimit = b.limit
	case r.Spec.Memory > 0 && (host == 0 || uint64(r.Spec.Memory) < host):
		st.MemoryLimit = uint64(r.Spec.Memory)
	}
	if st.MemoryLimit > 0 {
		st.MemoryPercent = float64(st.MemoryUsage) / float64(st.MemoryLimit) * 100
	}
	return st
}

// hostMemory is the host's memory in bytes (0 if unknown).
func hostMemory() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}
