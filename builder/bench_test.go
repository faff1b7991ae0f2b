package builder

import (
	"cmp"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatc/moatc/deps"
)

// BenchmarkColdBuildSandboxed builds the same dependency list cold (a fresh buildkitd root:
// no layer or cache-mount reuse) under moatc's sandbox (gVisor, the build network) and the
// old way (runc, the host's network), alternating, and reports the ratio of the medians.
// Run by `make bench`; the goal is at most 1.5x.
//
//	go test ./builder -run '^$' -bench ColdBuildSandboxed -benchtime 1x
func BenchmarkColdBuildSandboxed(b *testing.B) {
	if setupErr != nil {
		b.Fatal(setupErr)
	}
	list := []string{"jq", "node", "npm:typescript", "go"}
	plan := planFor(b, deps.Default(), list...)
	df := plan.Dockerfile("debian:bookworm-slim")
	var sandboxed, open []time.Duration
	for i := 0; i < b.N; i++ {
		for _, sb := range []*Sandbox{nil, testDaemon.Sandbox} {
			dir := filepath.Join(testDir, fmt.Sprintf("cold%d", i))
			if sb != nil {
				dir += "s"
			}
			d := &Daemon{Dir: dir, Prefix: prefix, ContainerdAddress: ctrdSock, Namespace: testNamespace, Sandbox: sb}
			if err := d.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			tag := fmt.Sprintf("moatc/run:cold-%d-%t", i, sb != nil)
			if _, err := Build(context.Background(), d, Request{Dockerfile: df, Tag: tag, Mode: ModeQuiet, LogPath: filepath.Join(dir, "build.log")}); err != nil {
				b.Fatal(err)
			}
			took := time.Since(start)
			d.Stop(context.Background(), 20*time.Second)
			os.RemoveAll(filepath.Join(dir, "root"))
			if sb != nil {
				sandboxed = append(sandboxed, took)
			} else {
				open = append(open, took)
			}
			fmt.Fprintf(os.Stderr, "cold build of %v, sandboxed %t: %.1fs; slowest steps: %s\n", list, sb != nil, took.Seconds(),
				slowest(filepath.Join(dir, "build.log"), 4))
		}
	}
	s, o := median(sandboxed), median(open)
	b.ReportMetric(s.Seconds(), "s-sandboxed")
	b.ReportMetric(o.Seconds(), "s-unsandboxed")
	b.ReportMetric(s.Seconds()/o.Seconds(), "ratio")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// slowest names the n slowest steps of a plain build log, with their times.
func slowest(log string, n int) string {
	b, err := os.ReadFile(log)
	if err != nil {
		return err.Error()
	}
	names, took := map[string]string{}, map[string]float64{}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || !strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[1] == "DONE" {
			var s float64
			fmt.Sscanf(strings.TrimSuffix(f[2], "s"), "%g", &s)
			took[f[0]] = s
		} else if strings.HasPrefix(f[1], "[") && names[f[0]] == "" {
			names[f[0]] = strings.Join(f[1:], " ")
		}
	}
	steps := make([]string, 0, len(took))
	for k := range took {
		steps = append(steps, k)
	}
	slices.SortFunc(steps, func(a, b string) int { return cmp.Compare(took[b], took[a]) })
	var out []string
	for _, k := range steps[:min(n, len(steps))] {
		name := names[k]
		name = reMountFlag.ReplaceAllString(name, "")
		if len(name) > 70 {
			name = name[:70] + "…"
		}
		out = append(out, fmt.Sprintf("%.1fs %s", took[k], name))
	}
	return strings.Join(out, "; ")
}
