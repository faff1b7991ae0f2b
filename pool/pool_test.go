package pool

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/moatc/moatc/state"
)

func TestClassAndSandboxNames(t *testing.T) {
	c := Class{Runtime: "gvisor", Platform: "ptrace", Memory: 1 << 30, CPUs: 1.5, Pids: 4096}
	if got := c.String(); got != "gvisor platform=ptrace memory=1073741824 cpus=1.5 pids=4096" {
		t.Errorf("String: %q", got)
	}
	if id, ok := IsSandbox(SandboxID("0123456789ab")); !ok || id != "0123456789ab" {
		t.Errorf("IsSandbox(SandboxID): %q %v", id, ok)
	}
	if _, ok := IsSandbox("moatc-0123456789ab"); ok {
		t.Error("a run's container taken for a pool sandbox")
	}
}

// TestTakeGiveBack: take hands a ready member of the class to the caller once, oldest first;
// GiveBack makes it ready again; Live follows state and owner.
func TestTakeGiveBack(t *testing.T) {
	p := &Pool{Dir: t.TempDir()}
	g, r := Class{Runtime: "gvisor", Pids: 10}, Class{Runtime: "runc"}
	now := time.Now()
	for i, m := range []*Member{
		{ID: "aaaaaaaaaaa1", Class: g, State: Ready, Created: now.Add(-2 * time.Second)},
		{ID: "aaaaaaaaaaa0", Class: g, State: Ready, Created: now.Add(-3 * time.Second)},
		{ID: "bbbbbbbbbbb0", Class: r, State: Ready, Created: now},
		{ID: "ccccccccccc0", Class: g, State: Filling, Created: now, Owner: &state.Process{Pid: 1 << 30}},
	} {
		os.MkdirAll(p.membersDir(), 0o700)
		if err := p.write(m); err != nil {
			t.Fatal(i, err)
		}
	}
	m1, err := p.take(g)
	if err != nil || m1 == nil || m1.ID != "aaaaaaaaaaa0" || m1.State != Claimed || !m1.Owner.Alive() {
		t.Fatalf("first take: %+v %v", m1, err)
	}
	m2, _ := p.take(g)
	if m2 == nil || m2.ID != "aaaaaaaaaaa1" {
		t.Fatalf("second take: %+v", m2)
	}
	if m3, _ := p.take(g); m3 != nil {
		t.Fatalf("a third gVisor member (only one filling is left): %+v", m3)
	}
	if m, _ := p.take(Class{Runtime: "gvisor"}); m != nil {
		t.Fatalf("another class took %+v", m)
	}
	if !p.Live(m1.ID) || p.Live("ccccccccccc0") {
		t.Errorf("Live: claimed by us %v, filling by a dead process %v", p.Live(m1.ID), p.Live("ccccccccccc0"))
	}
	p.GiveBack(m1)
	if m, _ := p.take(g); m == nil || m.ID != m1.ID {
		t.Fatalf("after GiveBack: %+v", m)
	}
	if err := p.Forget(m1.ID); err != nil || p.Live(m1.ID) {
		t.Errorf("Forget: %v, live %v", err, p.Live(m1.ID))
	}
	if _, err := os.Stat(filepath.Join(p.membersDir(), m1.ID+".json")); !os.IsNotExist(err) {
		t.Errorf("record left: %v", err)
	}
	ms, _ := p.Members()
	if len(ms) != 3 {
		t.Errorf("%d members left, want 3", len(ms))
	}
	p.Sizes = []Size{{Class: r, N: 1}, {Class: g, N: 2}}
	if p.Want() != 3 || !p.Keeps("runc") || p.Keeps("kata") || p.full() {
		t.Errorf("Want %d, Keeps runc %v, full %v", p.Want(), p.Keeps("runc"), p.full())
	}
}
