package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFullDisk: with the runs directory full, moatc once ignored failed record writes (a run
// that exited 0 stayed `created`, another `running`), left empty run directories, and later
// guessed the end wrongly. Now: a run that cannot be recorded says so with the fix and leaves
// nothing half-made; a run whose end cannot be recorded says so, and once there is space the
// next command records its real exit code from containerd.
func TestFullDisk(t *testing.T) {
	requireStack(t)
	h, err := os.MkdirTemp("/tmp", "moatc-full-") // short: containerd's socket path
	if err != nil {
		t.Fatal(err)
	}
	runs := filepath.Join(h, "runs")
	os.MkdirAll(runs, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", runs).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	env := []string{"MOATC_HOME=" + h}
	in := func(args ...string) result { return moatcRun(t, opts{env: env}, args...) }
	defer func() {
		in("clean")
		in("system", "stop", "--force")
		exec.Command("umount", runs).Run()
		os.RemoveAll(h)
	}()
	if r := in("image", "import", prefix+"/images/busybox.oci.tar"); r.code != 0 {
		t.Fatalf("import: %s", r.stderr)
	}
	filler := filepath.Join(runs, ".filler")
	fill := func(leave int64) {
		os.Remove(filler)
		exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=4k").Run() // until the disk is full
		if leave > 0 {
			st, _ := os.Stat(filler)
			os.Truncate(filler, st.Size()-leave)
		}
	}
	halfMade := func() []string {
		var out []string
		ents, _ := os.ReadDir(runs)
		for _, e := range ents {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				if _, err := os.Stat(filepath.Join(runs, e.Name(), "metadata.json")); err != nil {
					out = append(out, e.Name())
				}
			}
		}
		return out
	}
	ws := workspace(t)

	// Full before the run: refused, with the fix, and nothing left.
	fill(0)
	r := in("run", "--network", "none", "--image", "busybox", ws, "--", "true")
	if r.code != 125 || !strings.Contains(r.stderr, "free space in "+runs) {
		t.Errorf("a full runs directory: exit %d stderr %q", r.code, r.stderr)
	}
	if h := halfMade(); len(h) > 0 {
		t.Errorf("half-made run directories left: %v", h)
	}

	// Full during the run: its output fills the disk, so its end cannot be recorded.
	fill(200 << 10)
	r = in("run", "-n", "filler", "--network", "none", "--image", "busybox", ws, "--", "sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; exit 3")
	if r.code != 125 || !strings.Contains(r.stderr, "exit code 3") || !strings.Contains(r.stderr, "free space in "+runs) {
		t.Errorf("a run whose end cannot be recorded: exit %d stderr %q", r.code, r.stderr)
	}
	// Space again: the next command records the real end, from containerd.
	os.Remove(filler)
	var recs []runRecord
	json.Unmarshal([]byte(in("list", "--json").stdout), &recs)
	found := false
	for _, rec := range recs {
		if rec.Name == "filler" {
			found = true
			if rec.State != "stopped" || rec.ExitCode == nil || *rec.ExitCode != 3 {
				t.Errorf("after space was freed the run is %s, exit %v (%s); want stopped 3", rec.State, rec.ExitCode, rec.Error)
			}
			// The output that did not fit is counted by the logger, and said: never a log that
			// looks whole.
			if !strings.Contains(rec.Error, "of output could not be written to the log") || !strings.Contains(rec.Error, "no space left on device") {
				t.Errorf("the record does not say output was lost: %q", rec.Error)
			}
			if r := in("logs", "filler"); r.code != 0 || len(r.stdout) == 0 || strings.Trim(r.stdout, "x") != "" {
				t.Errorf("logs of the run whose output filled the disk: exit %d, %d bytes %.40q, stderr %q", r.code, len(r.stdout), r.stdout, r.stderr)
			}
		}
	}
	if !found {
		t.Errorf("the run's record is gone: %+v", recs)
	}
	// A half-made directory (a crash between mkdir and the record) goes with destroy by id.
	os.Mkdir(filepath.Join(runs, "0123456789ab"), 0o700)
	if r := in("destroy", "0123456789ab"); r.code != 0 {
		t.Errorf("destroy of a half-made run: exit %d %s", r.code, r.stderr)
	}
	if h := halfMade(); len(h) > 0 {
		t.Errorf("half-made run directories left after destroy: %v", h)
	}
}
