package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/moatc/moatc/internal/atomicfile"
)

// Attachments: more network namespaces on a run's own network, for the containers a run makes
// through moatc's Docker Engine API. Each gets a named netns /run/netns/moatc-RUN.KEY, a veth on
// the run's bridge mc-RUN and an address from .3 to .253 of the run's /24 (.254 is PortsKey's);
// the run's firewall rules match on the bridge, so an attached container gets exactly what the
// run gets (egress policy, strict mode, the host closed, no other runs), and the run and its
// attached containers reach each other. Their records (runs/RUN/attach/KEY.json), conflist and
// leases (runs/RUN/ipam) are in the run's state directory: Teardown of the run (and so `moatc
// clean`) removes every attachment with it.

// PortsKey is the key of the attachment that holds published ports: always the subnet's .254.
const PortsKey = "ports"

// Attachment is one extra network namespace on a run's network.
type Attachment struct {
	Key       string       `json:"key"`
	NetNSPath string       `json:"netns"`
	IP        netip.Addr   `json:"ip"`
	Gateway   netip.Addr   `json:"gateway"`
	Subnet    netip.Prefix `json:"subnet"`
}

var attachKeyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// PortsAddr is where a run's workload reaches the ports published by the containers attached
// to its network: the subnet's .254.
func PortsAddr(subnet netip.Prefix) netip.Addr {
	b := subnet.Masked().Addr().As4()
	b[3] = 254
	return netip.AddrFrom4(b)
}

func (m *Manager) attachDir(runID string) string { return filepath.Join(m.runDir(runID), "attach") }
func (m *Manager) attachConf(runID string) string {
	return filepath.Join(m.runDir(runID), "attach.conflist")
}
func attachNetNS(runID, key string) string {
	return filepath.Join(netnsDir, netName(runID)+"."+key) // run ids have no '.': no clash with another run's
}
func attachCtrID(runID, key string) string { return runID + "-" + key }

// attachConfList is the run's network for attachments: its bridge, with addresses .3 to .253
// (.254 for PortsKey) leased in the run's own state directory.
func (m *Manager) attachConfList(r *record, key string) ([]byte, error) {
	start, end := r.Subnet.Addr().As4(), r.Subnet.Addr().As4()
	start[3], end[3] = 3, 253
	if key == PortsKey {
		start[3], end[3] = 254, 254
	}
	return bridgeConfList(r, filepath.Join(m.runDir(r.RunID), "ipam"), netip.AddrFrom4(start), netip.AddrFrom4(end))
}

// Attach puts a new network namespace on run runID's network (made by Setup) and returns it.
// An attachment of that key that exists already is returned as it is.
func (m *Manager) Attach(ctx context.Context, runID, key string) (_ *Attachment, err error) {
	fail := func(err error) error { return fmt.Errorf("attaching %s to network %s: %w", key, netName(runID), err) }
	if err := checkRunID(runID); err != nil {
		return nil, fail(err)
	}
	if !attachKeyRE.MatchString(key) {
		return nil, fail(fmt.Errorf("key %q: use 1 to 64 letters, digits, '_', '.' or '-'", key))
	}
	if a, err := m.readAttachment(runID, key); err == nil {
		if _, serr := os.Stat(a.NetNSPath); serr == nil {
			return a, nil
		}
		m.Detach(ctx, runID, key)
	}
	rec, err := m.readRecord(runID)
	if err != nil {
		return nil, fail(fmt.Errorf("the run has no network: %w", err))
	}
	if rec.Shared {
		return nil, fail(errors.New("a shared network takes no attachments"))
	}
	if err := os.MkdirAll(m.attachDir(runID), 0o700); err != nil {
		return nil, fail(err)
	}
	conf, err := m.attachConfList(rec, key)
	if err != nil {
		return nil, fail(err)
	}
	if err := atomicfile.WriteNoSync(m.attachConf(runID), conf, 0o600); err != nil {
		return nil, fail(err)
	}
	a := &Attachment{Key: key, NetNSPath: attachNetNS(runID, key), Gateway: rec.Gateway, Subnet: rec.Subnet}
	// The record first: Detach and Teardown undo from it, whatever is half made.
	if err := m.writeAttachment(runID, a); err != nil {
		return nil, fail(err)
	}
	defer func() {
		if err != nil {
			m.Detach(context.WithoutCancel(ctx), runID, key)
			err = fail(err)
		}
	}()
	if err := createNetNS(a.NetNSPath); err != nil {
		return nil, fmt.Errorf("creating netns %s: %w", a.NetNSPath, err)
	}
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return nil, err
	}
	lo, err := libcni.ConfFromBytes(loopbackConf)
	if err != nil {
		return nil, err
	}
	c := m.libcni()
	id := attachCtrID(runID, key)
	if _, err := c.AddNetwork(ctx, lo, &libcni.RuntimeConf{ContainerID: id, NetNS: a.NetNSPath, IfName: "lo"}); err != nil {
		return nil, fmt.Errorf("cni add lo: %w", err)
	}
	res, err := c.AddNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: id, NetNS: a.NetNSPath, IfName: "eth0"})
	if err != nil {
		return nil, fmt.Errorf("cni add eth0: %w", err)
	}
	res100, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni add eth0: reading result: %w", err)
	}
	for _, ip := range res100.IPs {
		if v, ok := netip.AddrFromSlice(ip.Address.IP); ok && rec.Subnet.Contains(v.Unmap()) {
			a.IP = v.Unmap()
		}
	}
	if !a.IP.IsValid() {
		return nil, fmt.Errorf("cni add eth0: no address of %s in the result %v", rec.Subnet, res100.IPs)
	}
	for _, i := range res100.Interfaces {
		if i.Sandbox == "" && i.Name != bridgeName(runID) {
			if err := sysctl("net/ipv6/conf/"+i.Name+"/disable_ipv6", "1"); err != nil {
				return nil, err
			}
		}
	}
	if err := m.writeAttachment(runID, a); err != nil {
		return nil, err
	}
	return a, nil
}

// Attachments lists the attachments of a run's network.
func (m *Manager) Attachments(runID string) ([]*Attachment, error) {
	ents, err := os.ReadDir(m.attachDir(runID))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Attachment
	for _, e := range ents {
		if k, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			if a, err := m.readAttachment(runID, k); err == nil {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// Detach removes an attachment: CNI DEL (the veth and the lease), the netns, the record. A
// missing one is not an error. Kill the container in the netns first.
func (m *Manager) Detach(ctx context.Context, runID, key string) error {
	if err := checkRunID(runID); err != nil {
		return fmt.Errorf("detaching %s: %w", key, err)
	}
	if !attachKeyRE.MatchString(key) {
		return fmt.Errorf("detaching %s from network %s: bad key", key, netName(runID))
	}
	if err := m.detach(ctx, runID, key); err != nil {
		return fmt.Errorf("detaching %s from network %s: %w", key, netName(runID), err)
	}
	return nil
}

func (m *Manager) detach(ctx context.Context, runID, key string) error {
	ns := attachNetNS(runID, key)
	id := attachCtrID(runID, key)
	if b, err := os.ReadFile(m.attachConf(runID)); err == nil {
		if list, err := libcni.ConfListFromBytes(b); err == nil {
			p := ns
			if _, err := os.Stat(p); err != nil {
				p = ""
			}
			_ = m.libcni().DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: id, NetNS: p, IfName: "eth0"})
		}
	}
	var errs []error
	if err := removeNetNS(ns); err != nil {
		errs = append(errs, err)
	}
	for _, f := range []string{
		filepath.Join(m.cacheDir(), "results", netName(runID)+"-"+id+"-eth0"),
		filepath.Join(m.cacheDir(), "results", "moatc-loopback-"+id+"-lo"),
	} {
		os.Remove(f)
	}
	if len(errs) == 0 {
		if err := os.Remove(filepath.Join(m.attachDir(runID), key+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// detachAll removes every attachment of a run, for Teardown: those of its records, and netns
// named after the run whose records are lost.
func (m *Manager) detachAll(ctx context.Context, runID string) error {
	keys := map[string]bool{}
	if ents, err := os.ReadDir(m.attachDir(runID)); err == nil {
		for _, e := range ents {
			if k, ok := strings.CutSuffix(e.Name(), ".json"); ok {
				keys[k] = true
			}
		}
	}
	if ents, err := os.ReadDir(netnsDir); err == nil {
		for _, e := range ents {
			if k, ok := strings.CutPrefix(e.Name(), netName(runID)+"."); ok && attachKeyRE.MatchString(k) {
				keys[k] = true
			}
		}
	}
	var errs []error
	for k := range keys {
		if attachKeyRE.MatchString(k) {
			errs = append(errs, m.detach(ctx, runID, k))
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) readAttachment(runID, key string) (*Attachment, error) {
	b, err := os.ReadFile(filepath.Join(m.attachDir(runID), key+".json"))
	if err != nil {
		return nil, err
	}
	var a Attachment
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

func (m *Manager) writeAttachment(runID string, a *Attachment) error {
	b, _ := json.Marshal(a)
	return atomicfile.WriteNoSync(filepath.Join(m.attachDir(runID), a.Key+".json"), b, 0o600)
}
