package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/moatc/moatc/state"
)

// Subnets are claimed host-wide, not only under a home's lock: every moatc home on the host
// may share a pool, and two homes must never hand out one /24 at once, nor one home's clean
// take another's live networks for leftovers. A claim is a file in claimsDir named for the
// subnet, made with O_EXCL (the atomic step), holding the owner. /run goes with a reboot, as
// the bridges do.
var claimsDir = "/run/moatc/subnets"

type claim struct {
	StateDir string         `json:"state_dir"` // the owning home's network state
	RunID    string         `json:"run_id"`
	By       *state.Process `json:"by,omitempty"` // the process that claimed it
}

func claimPath(sub netip.Prefix) string { return filepath.Join(claimsDir, sub.Addr().String()) }

// claimSubnet claims sub for run id of this Manager. It reports false when another network
// holds it; a claim whose network is gone (its record and bridge both absent: a crash) is
// taken over.
func (m *Manager) claimSubnet(sub netip.Prefix, id string) (bool, error) {
	if err := os.MkdirAll(claimsDir, 0o755); err != nil {
		return false, fmt.Errorf("claiming subnet %s: %w", sub, err)
	}
	b, _ := json.Marshal(claim{StateDir: m.cfg.StateDir, RunID: id, By: state.Self()})
	// Written whole under a temporary name, then linked to the claim's name: link fails if the
	// name exists, and a claim is never seen half-written.
	tmp, err := os.CreateTemp(claimsDir, ".claim-*")
	if err != nil {
		return false, fmt.Errorf("claiming subnet %s: %w", sub, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(b)
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return false, fmt.Errorf("claiming subnet %s: %w", sub, werr)
	}
	for range 2 {
		err := os.Link(tmp.Name(), claimPath(sub))
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return false, fmt.Errorf("claiming subnet %s: %w", sub, err)
		}
		c, err := readClaim(claimPath(sub))
		if err != nil || !c.stale() {
			return false, nil // someone else's (or unreadable): leave it
		}
		// The claim of a network that no longer exists (a crash): take it over.
		os.Remove(claimPath(sub))
	}
	return false, nil
}

func readClaim(path string) (*claim, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c claim
	if err := json.Unmarshal(b, &c); err != nil || c.StateDir == "" || c.RunID == "" {
		return nil, fmt.Errorf("reading claim %s: malformed", path)
	}
	return &c, nil
}

// stale reports whether the claimed network is gone: the process that claimed it has exited,
// and it left neither a record in its home nor a bridge.
func (c *claim) stale() bool {
	if c.By.Alive() {
		return false
	}
	if _, err := os.Stat(filepath.Join(c.StateDir, "runs", c.RunID, "network.json")); err == nil {
		return false
	}
	if _, err := net.InterfaceByName(bridgeName(c.RunID)); err == nil {
		return false
	}
	return true
}

// releaseClaims removes the claims of run id made by this Manager.
func (m *Manager) releaseClaims(id string) error {
	ents, err := os.ReadDir(claimsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(claimsDir, e.Name())
		if c, err := readClaim(p); err == nil && c.RunID == id && (c.StateDir == m.cfg.StateDir || c.orphaned()) {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("releasing the claim on subnet %s: %w", e.Name(), err)
			}
		}
	}
	return nil
}

// othersClaims returns the run ids whose networks another home claims. A home that no longer
// exists cannot clean up after itself: its networks are anyone's to remove.
func (m *Manager) othersClaims() map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(claimsDir)
	for _, e := range ents {
		if c, err := readClaim(filepath.Join(claimsDir, e.Name())); err == nil && c.StateDir != m.cfg.StateDir && !c.orphaned() {
			out[c.RunID] = true
		}
	}
	return out
}

// orphaned reports whether the claiming home is gone (its network state directory removed).
func (c *claim) orphaned() bool {
	_, err := os.Stat(c.StateDir)
	return errors.Is(err, os.ErrNotExist)
}
