package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

type didRun struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Action   string `json:"action"`
	State    string `json:"state"`
	ExitCode *int   `json:"exit_code"`
}

func lines(s string) []string {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Split(strings.TrimSpace(s), "\n")
}

func TestListFiltersAndChangingCommandsJSON(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			done, live := "lsdone-"+rt, "lslive-"+rt
			if r := moatcRun(t, opts{}, busyboxRun(rt, []string{"-n", done}, ws, "sh", "-c", "exit 5")...); r.code != 5 {
				t.Fatalf("exit %d, want 5: %s", r.code, r.stderr)
			}
			liveID := strings.TrimSpace(mustRun(t, busyboxRun(rt, []string{"-d", "-n", live, "--label", "team=" + rt, "--label", "tier=web"}, ws, "sleep", "300")...).stdout)
			doneID := status(t, done).ID

			// Different keys AND, one key's values OR.
			got := lines(mustRun(t, "list", "-q", "--filter", "name=ls*-"+rt, "--filter", "state=running").stdout)
			if strings.Join(got, ",") != liveID {
				t.Errorf("running: %v, want [%s]", got, liveID)
			}
			got = lines(mustRun(t, "list", "-q", "--filter", "name=ls*-"+rt, "--filter", "state=exited").stdout)
			if strings.Join(got, ",") != doneID {
				t.Errorf("exited: %v, want [%s]", got, doneID)
			}
			got = lines(mustRun(t, "ps", "-q", "-f", "name="+done, "-f", "name="+live).stdout)
			if len(got) != 2 {
				t.Errorf("name OR name: %v, want both", got)
			}
			if got := lines(mustRun(t, "list", "-q", "--filter", "label=nobody=here").stdout); len(got) != 0 {
				t.Errorf("a label no run has matched %v", got)
			}
			for _, f := range []string{"label=team=" + rt, "label=tier"} {
				if got := lines(mustRun(t, "list", "-q", "--filter", f).stdout); strings.Join(got, ",") != liveID {
					t.Errorf("--filter %s: %v, want [%s]", f, got, liveID)
				}
			}
			if got := lines(mustRun(t, "list", "-q", "--filter", "label=tier=db").stdout); len(got) != 0 {
				t.Errorf("label=tier=db matched %v", got)
			}
			out := mustRun(t, "list", "--filter", "id="+liveID, "--format", "{{.Name}} {{.State}} {{.Spec.Runtime}}").stdout
			if out != live+" running "+rt+"\n" {
				t.Errorf("template: %q", out)
			}
			var recs []runRecord
			if err := json.Unmarshal([]byte(mustRun(t, "list", "--format", "json", "--filter", "name="+done).stdout), &recs); err != nil || len(recs) != 1 || *recs[0].ExitCode != 5 {
				t.Errorf("--format json: %+v %v", recs, err)
			}

			var did []didRun
			if err := json.Unmarshal([]byte(mustRun(t, "stop", "--json", "-t", "1", live).stdout), &did); err != nil {
				t.Fatal(err)
			}
			if len(did) != 1 || did[0].ID != liveID || did[0].Action != "stopped" || did[0].State != "stopped" || did[0].ExitCode == nil {
				t.Errorf("stop --json: %+v", did)
			}
			did = nil
			if err := json.Unmarshal([]byte(mustRun(t, "destroy", "--json", done, live).stdout), &did); err != nil {
				t.Fatal(err)
			}
			if len(did) != 2 || did[0].ID != doneID || did[1].ID != liveID || did[0].Action != "removed" {
				t.Errorf("destroy --json: %+v", did)
			}
			if got := lines(mustRun(t, "list", "-q", "-f", "name=ls*-"+rt).stdout); len(got) != 0 {
				t.Errorf("left after destroy: %v", got)
			}
			// A failing destroy still says, in JSON, what it did before.
			r := moatcRun(t, opts{}, "destroy", "--json", "no-such-run")
			if r.code != 125 || strings.TrimSpace(r.stdout) != "[]" || !strings.Contains(r.stderr, "no such run") {
				t.Errorf("destroy of a missing run: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
			}
		})
	}
}

func TestListBadFilters(t *testing.T) {
	requireStack(t)
	for _, args := range [][]string{
		{"list", "--filter", "state=dead"},
		{"list", "--filter", "colour=red"},
		{"list", "--filter", "name"},
		{"list", "--format", "{{.Name"},
		{"list", "--format", "{{.NoSuchField}}"},
	} {
		r := moatcRun(t, opts{}, args...)
		if r.code != 2 || !strings.Contains(r.stderr, "moatc: ") {
			t.Errorf("%v: exit %d stderr %q, want 2 and why", args, r.code, r.stderr)
		}
	}
	if r := mustRun(t, "clean", "--json"); !strings.HasPrefix(strings.TrimSpace(r.stdout), "{") {
		t.Errorf("clean --json: %q", r.stdout)
	}
}
