package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

type topOutput struct {
	Run       string `json:"run"`
	Processes []struct {
		PID int    `json:"pid"`
		UID int    `json:"uid"`
		Cmd string `json:"cmd"`
	} `json:"processes"`
}

type statsOutput struct {
	Run         string  `json:"run"`
	CPUPercent  float64 `json:"cpu_percent"`
	MemoryUsage uint64  `json:"memory_usage"`
	MemoryLimit uint64  `json:"memory_limit"`
	Pids        uint64  `json:"pids"`
}

// TestTopAndStats: a detached run's processes and resource use, on both runtimes; a run that
// does not exist or no longer runs is a clear error (125).
func TestTopAndStats(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "top-" + rt
			id := strings.TrimSpace(mustRun(t, busyboxRun(rt, []string{"-d", "-n", name, "--memory", "96m"}, ws, "sleep", "30")...).stdout)
			t.Cleanup(func() { moatcRun(t, opts{}, "destroy", "--force", id) })

			var top topOutput
			out := mustRun(t, "top", "--json", name).stdout
			if err := json.Unmarshal([]byte(out), &top); err != nil {
				t.Fatalf("top --json: %v\n%s", err, out)
			}
			found := false
			for _, p := range top.Processes {
				found = found || (strings.Contains(p.Cmd, "sleep") && p.PID > 0)
			}
			if !found || top.Run != id {
				t.Errorf("top --json of %s: no sleep process: %s", id, out)
			}
			if table := mustRun(t, "top", name).stdout; !strings.Contains(table, "CMD") || !strings.Contains(table, "sleep") {
				t.Errorf("top: %q", table)
			}

			var st []statsOutput
			out = mustRun(t, "stats", "--json", "--interval", "200ms", name).stdout
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("stats --json: %v\n%s", err, out)
			}
			if len(st) != 1 || st[0].Run != id || st[0].MemoryUsage == 0 || st[0].MemoryLimit != 96<<20 || st[0].Pids == 0 {
				t.Errorf("stats --json: %s", out)
			}
			// Without RUN: every running run, this one among them.
			if all := mustRun(t, "stats").stdout; !strings.Contains(all, id) || !strings.Contains(all, "96.00MiB") {
				t.Errorf("stats: %q", all)
			}

			mustRun(t, "stop", "-t", "1", name)
			for _, args := range [][]string{{"top", name}, {"stats", name}} {
				r := moatcRun(t, opts{}, args...)
				if r.code != 125 || !strings.Contains(r.stderr, "not running") || !strings.Contains(r.stderr, "moatc list") {
					t.Errorf("%v of a stopped run: exit %d, %q", args, r.code, r.stderr)
				}
			}
		})
	}
	r := moatcRun(t, opts{}, "top", "no-such-run")
	if r.code != 125 || !strings.Contains(r.stderr, "moatc list") {
		t.Errorf("top of an unknown run: exit %d, %q", r.code, r.stderr)
	}
}
