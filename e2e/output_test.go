package e2e

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBinaryOutputRoundTrip: `moatc logs` once gave 93 MB back for 50 MB of binary output,
// and the log was 4x the output. The shim's logger now stores the bytes as they came: the
// output, printed live and by `logs`, is identical, and the log is barely bigger.
func TestBinaryOutputRoundTrip(t *testing.T) {
	requireStack(t)
	data := make([]byte, 50_000_000) // under half the default cap: one file
	rand.Read(data)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			if err := os.WriteFile(filepath.Join(ws, "rand.bin"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			name := "binary-" + rt
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{"-n", name, "--network", "none"}, ws, "sh", "-c", "cat rand.bin; echo apart >&2")...)
			if r.code != 0 || r.stdout != string(data) || !strings.HasSuffix(r.stderr, "apart\n") {
				t.Fatalf("run: exit %d, stdout %d bytes (identical: %v), stderr %q", r.code, len(r.stdout), r.stdout == string(data), tailOf(r.stderr))
			}
			st := status(t, name)
			r = mustRun(t, "logs", name)
			if r.stdout != string(data) || r.stderr != "apart\n" {
				t.Fatalf("logs: stdout %d bytes (identical: %v), stderr %q", len(r.stdout), r.stdout == string(data), tailOf(r.stderr))
			}
			var size int64
			for _, f := range []string{"output.log", "output.1.log"} {
				if fi, err := os.Stat(filepath.Join(home, "runs", st.ID, f)); err == nil {
					size += fi.Size()
				}
			}
			if ratio := float64(size) / float64(len(data)); ratio < 1 || ratio > 1.01 {
				t.Errorf("the log is %.4fx the output", ratio)
			}
			if st.Output != "shim" {
				t.Errorf("the record says the output is recorded by %q, want shim", st.Output)
			}
			t.Logf("%d bytes of output, %d bytes of log", len(data), size)
		})
	}
}

// TestOutputOutlivesMoatc: the output of a detached run is written by its shim's logger, so
// with no moatc command or supervisor left the workload keeps running and its log keeps
// growing; the next command finds it healthy, `logs -f` follows it to its end, and the real
// exit code is recorded.
func TestOutputOutlivesMoatc(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			name := "outlives-" + rt
			id := strings.TrimSpace(mustRun(t, busyboxRun(rt, []string{"-d", "-n", name, "--network", "none"}, ws, "sh", "-c",
				"i=0; while [ $i -lt 40 ]; do echo tick-$i; i=$((i+1)); sleep 0.2; done; exit 4")...).stdout)
			waitLog(t, name, "tick-2\n")
			killSupervisor(t, id)
			// No moatc process at all now: only the shim, its logger and the workload.
			log := filepath.Join(home, "runs", id, "output.log")
			size := func() int64 {
				fi, err := os.Stat(log)
				if err != nil {
					t.Fatal(err)
				}
				return fi.Size()
			}
			before := size()
			time.Sleep(1500 * time.Millisecond)
			if after := size(); after <= before {
				t.Fatalf("the log stopped growing with its supervisor gone: %d then %d bytes", before, after)
			}
			r := mustRun(t, "logs", "-f", name)
			var want strings.Builder
			for i := range 40 {
				fmt.Fprintf(&want, "tick-%d\n", i)
			}
			if r.stdout != want.String() {
				t.Errorf("logs -f printed %q, want tick-0..tick-39 in order", r.stdout)
			}
			st := status(t, name)
			if st.State != "stopped" || st.ExitCode == nil || *st.ExitCode != 4 || st.Error != "" {
				t.Errorf("the run is %s (exit %v, %q), want stopped 4", st.State, st.ExitCode, st.Error)
			}
		})
	}
}

func tailOf(s string) string {
	if len(s) > 300 {
		return "..." + s[len(s)-300:]
	}
	return s
}
