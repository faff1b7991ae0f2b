package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// ErrNoPlugins is wrapped by the error of Setup when CNI plugins are missing.
var ErrNoPlugins = errors.New("cni plugins missing")

var neededPlugins = []string{"bridge", "host-local", "loopback"}

const cniVersion = "1.0.0" // the newest spec Debian's plugins (1.1.1) speak

// PluginDir is the first plugin directory that has every plugin moatc needs (BuildKit takes
// one directory; runs look in each).
func (m *Manager) PluginDir() (string, error) {
	if err := m.checkPlugins(); err != nil {
		return "", err
	}
	for _, d := range m.cfg.PluginDirs {
		if !slices.ContainsFunc(neededPlugins, func(p string) bool { return !isPlugin(d, p) }) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no single directory of %s holds all of %s; put the CNI plugins in one (cni_plugin_dir)", strings.Join(m.cfg.PluginDirs, ", "), strings.Join(neededPlugins, ", "))
}

func isPlugin(dir, name string) bool {
	st, err := os.Stat(filepath.Join(dir, name))
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}

func (m *Manager) checkPlugins() error {
	var missing []string
	for _, p := range neededPlugins {
		if !slices.ContainsFunc(m.cfg.PluginDirs, func(d string) bool { return isPlugin(d, p) }) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("cni plugin(s) %s not found in %s; install them with `make setup` or `apt-get install containernetworking-plugins`: %w",
			strings.Join(missing, ", "), strings.Join(m.cfg.PluginDirs, ", "), ErrNoPlugins)
	}
	return nil
}

// confList is the run's CNI network: its own bridge with the gateway address, and host-local
// IPAM handing out exactly one address (.2) from the run's /24, leases kept under StateDir.
// ipMasq is off: moatc adds its own masquerade rule (see firewall.go).
func (m *Manager) confList(r *record) ([]byte, error) {
	return bridgeConfList(r, m.ipamDir(), r.IP, rangeEnd(r))
}

// bridgeConfList is a conflist on run r's bridge whose IPAM hands out first..last, with its
// leases in ipamDir.
func bridgeConfList(r *record, ipamDir string, first, last netip.Addr) ([]byte, error) {
	type ipRange struct {
		Subnet     string `json:"subnet"`
		RangeStart string `json:"rangeStart"`
		RangeEnd   string `json:"rangeEnd"`
		Gateway    string `json:"gateway"`
	}
	bridge := map[string]any{
		"type":        "bridge",
		"bridge":      bridgeName(r.RunID),
		"isGateway":   true,
		"ipMasq":      false,
		"hairpinMode": false,
		"ipam": map[string]any{
			"type":    "host-local",
			"dataDir": ipamDir,
			"ranges": [][]ipRange{{{
				Subnet: r.Subnet.String(), RangeStart: first.String(), RangeEnd: last.String(), Gateway: r.Gateway.String(),
			}}},
			"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
		},
	}
	if r.MTU > 0 {
		bridge["mtu"] = r.MTU
	}
	conf := map[string]any{"cniVersion": cniVersion, "name": netName(r.RunID), "plugins": []any{bridge}}
	return json.MarshalIndent(conf, "", "  ")
}

// rangeEnd is the last address IPAM hands out: the run's one address, or .254 of a shared network.
func rangeEnd(r *record) netip.Addr {
	if !r.Shared {
		return r.IP
	}
	b := r.Subnet.Addr().As4()
	b[3] = 254
	return netip.AddrFrom4(b)
}

var loopbackConf = []byte(`{"cniVersion":"` + cniVersion + `","name":"moatc-loopback","type":"loopback"}`)

// libcni keeps its result cache under StateDir (not /var/lib/cni), so all of a run's state is
// in one place and Teardown in a new process finds it.
func (m *Manager) libcni() *libcni.CNIConfig {
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: io.Discard}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir(m.cfg.PluginDirs, m.cacheDir(), exec)
}

// cniAdd runs ADD for lo and for eth0 at once (they touch different interfaces) and returns
// the host-side veth name.
func (m *Manager) cniAdd(ctx context.Context, r *record, conf []byte) (hostVeth string, err error) {
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		return "", err
	}
	lo, err := libcni.ConfFromBytes(loopbackConf)
	if err != nil {
		return "", err
	}
	c := m.libcni()
	ns := netnsPath(r.RunID)
	loErr := make(chan error, 1)
	go func() {
		_, err := c.AddNetwork(ctx, lo, &libcni.RuntimeConf{ContainerID: r.RunID, NetNS: ns, IfName: "lo"})
		loErr <- err
	}()
	res, err := c.AddNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: r.RunID, NetNS: ns, IfName: "eth0"})
	if e := <-loErr; e != nil {
		return "", fmt.Errorf("cni add lo: %w", e)
	}
	if err != nil {
		return "", fmt.Errorf("cni add eth0: %w", err)
	}
	res100, err := types100.NewResultFromResult(res)
	if err != nil {
		return "", fmt.Errorf("cni add eth0: reading result: %w", err)
	}
	got := false
	for _, ip := range res100.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP); ok && a.Unmap() == r.IP {
			got = true
		}
	}
	if !got {
		return "", fmt.Errorf("cni add eth0: the bridge plugin did not assign %s (result: %v)", r.IP, res100.IPs)
	}
	for _, i := range res100.Interfaces {
		if i.Sandbox == "" && i.Name != bridgeName(r.RunID) {
			hostVeth = i.Name
		}
	}
	return hostVeth, nil
}

// cniDel runs DEL for eth0 from the conflist on disk; the netns path is passed only if the
// namespace still exists, so the plugins release what they can either way. lo gets no DEL: it
// would only set lo down in a namespace about to go.
func (m *Manager) cniDel(ctx context.Context, runID string) error {
	b, err := os.ReadFile(m.confPath(runID))
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return err
	}
	ns := netnsPath(runID)
	if _, err := os.Stat(ns); err != nil {
		ns = ""
	}
	if err := m.libcni().DelNetworkList(ctx, list, &libcni.RuntimeConf{ContainerID: runID, NetNS: ns, IfName: "eth0"}); err != nil {
		return fmt.Errorf("cni del eth0: %w", err)
	}
	return nil
}

// cacheFiles are libcni's cached results of a run (removed by DEL; removed again in case DEL
// could not run).
func (m *Manager) cacheFiles(runID string) []string {
	return []string{
		filepath.Join(m.cacheDir(), "results", netName(runID)+"-"+runID+"-eth0"),
		filepath.Join(m.cacheDir(), "results", "moatc-loopback-"+runID+"-lo"),
	}
}
