package cni

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
)

// TestHomesSharingAPool: two homes (two Managers with their own state) on one pool never get
// one subnet, even setting up at the same moment, and one home's Leftovers (what its clean
// removes) never lists the other's live networks.
func TestHomesSharingAPool(t *testing.T) {
	a := newEnv(t)
	dir := t.TempDir()
	other, err := New(Config{ConfDir: filepath.Join(dir, "conf"), StateDir: filepath.Join(dir, "state"), Pool: a.pool})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var bIDs []string
	t.Cleanup(func() {
		for _, id := range bIDs {
			if err := other.Teardown(ctx, id); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	var mu sync.Mutex
	subnets := map[string]string{}
	var wg sync.WaitGroup
	for i := range 6 {
		m, id := a.m, a.id()
		if i%2 == 1 {
			m = other
			id = a.id()[:10] + "bb"
			mu.Lock()
			bIDs = append(bIDs, id)
			mu.Unlock()
		}
		wg.Go(func() {
			n, err := m.Setup(ctx, id, Options{})
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := subnets[n.Subnet.String()]; ok {
				t.Errorf("subnet %s given to %s and %s", n.Subnet, prev, id)
			}
			subnets[n.Subnet.String()] = id
		})
	}
	wg.Wait()
	left, err := a.m.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range bIDs {
		if slices.Contains(left, id) {
			t.Errorf("home A's leftovers list home B's live network %s", id)
		}
	}
	// A claim whose network is gone (a crash) is taken over; a live one is not.
	n, err := a.m.Setup(ctx, a.id(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := other.claimSubnet(n.Subnet, "intruder"); err != nil || ok {
		t.Errorf("a live network's subnet was claimed again: %v %v", ok, err)
	}
	stale := netip.MustParsePrefix("10.250.99.0/24")
	os.MkdirAll(claimsDir, 0o755)
	os.WriteFile(claimPath(stale), []byte(`{"state_dir":"/nonexistent","run_id":"gone"}`), 0o644)
	defer os.Remove(claimPath(stale))
	if ok, err := other.claimSubnet(stale, "taker"); err != nil || !ok {
		t.Errorf("a stale claim was not taken over: %v %v", ok, err)
	}
	// A claim of a home that no longer exists is anyone's to clean; a live home's is not.
	orphan := netip.MustParsePrefix("10.250.98.0/24")
	os.WriteFile(claimPath(orphan), []byte(`{"state_dir":"/nonexistent","run_id":"orph"}`), 0o644)
	defer os.Remove(claimPath(orphan))
	if other.othersClaims()["orph"] {
		t.Error("a deleted home's claim keeps its network from being cleaned")
	}
	if !a.m.othersClaims()[bIDs[0]] {
		t.Error("a live home's claim is not respected")
	}
	other.releaseClaims("taker")
	if _, err := os.Stat(claimPath(stale)); err == nil {
		t.Error("releaseClaims left the claim")
	}
}
