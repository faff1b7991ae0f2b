package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/moatc/moatc/cni"
	"github.com/moatc/moatc/internal/atomicfile"
)

// Networks. Every container the engine makes joins the run's own network (Config.Net,
// Config.NetRun) through cni.Manager.Attach: the run's bridge, its /24, its firewall rules, so a
// container never gets more than the run, and the run reaches it directly. Docker's networks
// are records on top of that one L2 network: `bridge` (the default), `host` and `none` exist
// always, user networks are files in STATE/networks/. There is no isolation between the user
// networks of one run: all are the run's own. A container's network state (its attachment, the
// networks it is connected to, its aliases) is net.json in its directory; names are resolved
// through an /etc/hosts the engine writes for each container and rewrites in place (the same
// inode: it is bind-mounted) when a container is created, connected, disconnected or removed.

// netState is what the engine keeps of networks; the zero value is ready (loaded on first use).
type netState struct {
	mu     sync.Mutex
	loaded bool
	nets   map[string]*netRecord // user networks by id
	ctrs   map[string]*ctrNet    // by container id
	run    *cni.Network          // the run's network, read once
}

// netRecord is a user network.
type netRecord struct {
	ID      string
	Name    string
	Created time.Time
	Labels  map[string]string
	Options map[string]string
}

// ctrNet is a container's place on the network.
type ctrNet struct {
	Name     string // the container's (names never change: no rename yet)
	Key      string // the cni attachment's key
	NetNS    string
	IP       netip.Addr
	Gateway  netip.Addr
	Subnet   netip.Prefix
	Hostname string
	// Networks are the Docker networks the container is connected to, by name, with its
	// aliases on each (--network-alias).
	Networks map[string][]string
	// Ports are the published ports (HostPort 0: picked when they open); Asked as requested.
	Ports []portBinding `json:",omitempty"`
	Asked []portBinding `json:",omitempty"`
	// Extra are --add-host's names, each "IP NAME".
	Extra []string `json:",omitempty"`
}

func (e *Engine) networksDir() string { return filepath.Join(e.cfg.StateDir, "networks") }

// builtinID is the stable id of a predefined network.
func (e *Engine) builtinID(name string) string {
	h := sha256.Sum256([]byte(e.id + "/" + name))
	return hex.EncodeToString(h[:])
}

var builtinNets = []string{network.NetworkBridge, network.NetworkHost, network.NetworkNone}

// netLoad reads the networks and the containers' network state. Call with nw.mu held.
func (e *Engine) netLoad() {
	nw := &e.nw
	if nw.loaded {
		return
	}
	nw.loaded = true
	nw.nets, nw.ctrs = map[string]*netRecord{}, map[string]*ctrNet{}
	if ents, err := os.ReadDir(e.networksDir()); err == nil {
		for _, d := range ents {
			var r netRecord
			if b, err := os.ReadFile(filepath.Join(e.networksDir(), d.Name())); err == nil && json.Unmarshal(b, &r) == nil && r.ID != "" {
				nw.nets[r.ID] = &r
			}
		}
	}
	if ents, err := os.ReadDir(filepath.Join(e.cfg.StateDir, "containers")); err == nil {
		for _, d := range ents {
			var cn ctrNet
			if b, err := os.ReadFile(filepath.Join(e.containerDir(d.Name()), "net.json")); err == nil && json.Unmarshal(b, &cn) == nil {
				nw.ctrs[d.Name()] = &cn
			}
		}
	}
	if e.cfg.Net != nil {
		if n, err := e.cfg.Net.Load(e.cfg.NetRun); err == nil {
			nw.run = n
		}
	}
}

// findNetwork finds a network by name, id or id prefix: a user network (rec) or a predefined
// one (rec nil, name set).
func (e *Engine) findNetwork(ref string) (name string, rec *netRecord, err error) {
	e.netLoad()
	for _, b := range builtinNets {
		if ref == b || ref == e.builtinID(b) {
			return b, nil, nil
		}
	}
	for _, r := range e.nw.nets {
		if r.Name == ref || r.ID == ref {
			return r.Name, r, nil
		}
	}
	var found []string
	for _, b := range builtinNets {
		if strings.HasPrefix(e.builtinID(b), ref) {
			found = append(found, b)
		}
	}
	var frec *netRecord
	for _, r := range e.nw.nets {
		if strings.HasPrefix(r.ID, ref) {
			found, frec = append(found, r.Name), r
		}
	}
	switch {
	case ref == "" || len(found) == 0:
		return "", nil, notFound("network %s not found", ref)
	case len(found) > 1:
		return "", nil, invalid("network %s is ambiguous (%d matches found based on ID prefix)", ref, len(found))
	}
	if frec != nil {
		return frec.Name, frec, nil
	}
	return found[0], nil, nil
}

func (e *Engine) netID(name string) string {
	for _, r := range e.nw.nets {
		if r.Name == name {
			return r.ID
		}
	}
	return e.builtinID(name)
}

// networkMounts is what create gives a container of NetworkMode mode: its attachment to the
// run's network, its hosts file and resolv.conf. Without a network (Config.Net nil, or mode
// none) it gives nothing: the container has loopback only.
func (e *Engine) networkMounts(ctx context.Context, id, ctrName, dir, hostname string, hc *container.HostConfig, exposed network.PortSet, nc *network.NetworkingConfig) (netns string, mounts []specs.Mount, err error) {
	plan, err := planPorts(hostPorts{hc.PortBindings, hc.PublishAllPorts}, exposed)
	if err != nil {
		return "", nil, err
	}
	mode := string(hc.NetworkMode)
	if mode == "" || mode == network.NetworkDefault {
		mode = network.NetworkBridge
	}
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	name, _, err := e.findNetwork(mode)
	if err != nil {
		return "", nil, err
	}
	if name == network.NetworkHost {
		return "", nil, forbidden("moatc refuses --network host: a container of the engine gets the run's network, never the host's")
	}
	if name == network.NetworkNone || e.cfg.Net == nil {
		if len(plan) > 0 {
			return "", nil, invalid("ports cannot be published without a network (--network none, or an engine without one)")
		}
		return "", nil, nil
	}
	if e.nw.run == nil {
		return "", nil, fmt.Errorf("attaching container %s: the run %s has no network", id, e.cfg.NetRun)
	}
	a, err := e.cfg.Net.Attach(ctx, e.cfg.NetRun, id[:12])
	if err != nil {
		return "", nil, err
	}
	cn := &ctrNet{Name: ctrName, Key: a.Key, NetNS: a.NetNSPath, IP: a.IP, Gateway: a.Gateway, Subnet: a.Subnet, Hostname: hostname,
		Networks: map[string][]string{name: nil}, Ports: plan, Asked: slices.Clone(plan)}
	if nc != nil {
		for n, ep := range nc.EndpointsConfig {
			if ep == nil {
				continue
			}
			if nn, _, err := e.findNetwork(n); err == nil && nn == name && name != network.NetworkBridge {
				cn.Networks[name] = slices.Clone(ep.Aliases)
			}
		}
	}
	fail := func(err error) (string, []specs.Mount, error) {
		e.cfg.Net.Detach(context.WithoutCancel(ctx), e.cfg.NetRun, a.Key)
		return "", nil, err
	}
	if cn.Extra, err = extraHosts(hc.ExtraHosts, cni.PortsAddr(a.Subnet)); err != nil {
		return fail(err)
	}
	resolv, err := os.ReadFile(e.nw.run.ResolvPath)
	if err != nil {
		return fail(fmt.Errorf("reading the run's resolv.conf: %w", err))
	}
	if err := os.WriteFile(filepath.Join(dir, "resolv.conf"), resolv, 0o644); err != nil {
		return fail(err)
	}
	if err := e.saveCtrNet(dir, cn); err != nil {
		return fail(err)
	}
	e.nw.ctrs[id] = cn
	e.writeHostsLocked()
	ro := []string{"rbind", "ro", "nosuid", "nodev", "noexec"}
	return a.NetNSPath, []specs.Mount{
		{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(dir, "hosts"), Options: ro},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(dir, "resolv.conf"), Options: ro},
	}, nil
}

func (e *Engine) saveCtrNet(dir string, cn *ctrNet) error {
	b, _ := json.Marshal(cn)
	if err := atomicfile.WriteNoSync(filepath.Join(dir, "net.json"), b, 0o600); err != nil {
		return fmt.Errorf("saving the container's network: %w", err)
	}
	return nil
}

// detachContainer removes a container's attachment (its task is gone) and its name from the
// others' hosts files.
func (e *Engine) detachContainer(ctx context.Context, id string) {
	e.closePorts(id)
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	e.netLoad()
	cn := e.nw.ctrs[id]
	if cn == nil {
		return
	}
	delete(e.nw.ctrs, id)
	if e.cfg.Net != nil {
		if err := e.cfg.Net.Detach(ctx, e.cfg.NetRun, cn.Key); err != nil {
			fmt.Fprintf(os.Stderr, "moatc engine: warning: %v\n", err)
		}
	}
	e.writeHostsLocked()
}

// writeHostsLocked rewrites every container's hosts file: itself, then every container that
// shares a network with it, by name, aliases and short id. Files are rewritten in place (the
// same inode), so a running container sees the change through its bind mount.
func (e *Engine) writeHostsLocked() {
	names := map[string]string{}
	for id, cn := range e.nw.ctrs {
		names[id] = cn.Name
	}
	for id, cn := range e.nw.ctrs {
		var b strings.Builder
		b.WriteString("# written by moatc's engine: this container and those sharing a network with it\n")
		b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
		fmt.Fprintf(&b, "%s\t%s\n", cn.IP, strings.Join(uniq(append([]string{cn.Hostname, names[id]}, allAliases(cn)...)), " "))
		for _, x := range cn.Extra {
			b.WriteString(x + "\n")
		}
		others := make([]string, 0, len(e.nw.ctrs))
		for oid := range e.nw.ctrs {
			others = append(others, oid)
		}
		sort.Strings(others)
		for _, oid := range others {
			o := e.nw.ctrs[oid]
			if oid == id {
				continue
			}
			var hn []string
			for n, al := range o.Networks {
				if _, ok := cn.Networks[n]; ok {
					hn = append(hn, al...)
					if n != network.NetworkBridge { // Docker's default bridge has no name resolution
						hn = append(hn, names[oid], oid[:12])
					}
				}
			}
			if len(hn) > 0 {
				fmt.Fprintf(&b, "%s\t%s\n", o.IP, strings.Join(uniq(hn), " "))
			}
		}
		p := filepath.Join(e.containerDir(id), "hosts")
		// Not atomicfile: a rename would leave the container's bind mount on the old inode.
		f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			continue
		}
		f.Write([]byte(b.String()))
		f.Truncate(int64(b.Len()))
		f.Close()
	}
}

func allAliases(cn *ctrNet) []string {
	var out []string
	for _, al := range cn.Networks {
		out = append(out, al...)
	}
	sort.Strings(out)
	return out
}

func uniq(s []string) []string {
	var out []string
	for _, v := range s {
		if v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out
}

// containerNetworks is a container's NetworkSettings.Networks.
func (e *Engine) containerNetworks(rec record) map[string]*network.EndpointSettings {
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	e.netLoad()
	out := map[string]*network.EndpointSettings{}
	cn := e.nw.ctrs[rec.ID]
	if cn == nil {
		if rec.HostConfig != nil && rec.HostConfig.NetworkMode == network.NetworkNone {
			out[network.NetworkNone] = &network.EndpointSettings{NetworkID: e.builtinID(network.NetworkNone)}
		}
		return out
	}
	for n, al := range cn.Networks {
		dns := []string{}
		if n != network.NetworkBridge {
			dns = uniq(append([]string{rec.Name, rec.ID[:12]}, al...))
		}
		out[n] = &network.EndpointSettings{
			Aliases: nonNil(al), NetworkID: e.netID(n), EndpointID: e.builtinID("endpoint/" + rec.ID + "/" + n),
			Gateway: cn.Gateway, IPAddress: cn.IP, IPPrefixLen: cn.Subnet.Bits(), DNSNames: dns,
		}
	}
	return out
}

// connect puts container c on network name (already attached: only the record and the
// hosts files change).
func (e *Engine) connect(c *ctr, name string, aliases []string) error {
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	cn := e.nw.ctrs[c.rec.ID]
	if cn == nil {
		return forbidden("container %s is not on the run's network (--network none): it cannot be connected", c.rec.Name)
	}
	if _, ok := cn.Networks[name]; ok {
		return forbidden("endpoint with name %s already exists in network %s", c.rec.Name, name)
	}
	cn.Networks[name] = slices.Clone(aliases)
	if err := e.saveCtrNet(c.dir, cn); err != nil {
		return err
	}
	e.writeHostsLocked()
	return nil
}

func (e *Engine) disconnect(c *ctr, name string) error {
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	cn := e.nw.ctrs[c.rec.ID]
	if cn == nil {
		return forbidden("container %s is not connected to network %s", c.rec.Name, name)
	}
	if _, ok := cn.Networks[name]; !ok {
		return forbidden("container %s is not connected to network %s", c.rec.Name, name)
	}
	delete(cn.Networks, name)
	if err := e.saveCtrNet(c.dir, cn); err != nil {
		return err
	}
	e.writeHostsLocked()
	return nil
}

// maxAliases bounds a container's aliases on a network: each is a line in its peers' hosts files.
const maxAliases = 64

// checkNames refuses a hostname or aliases that are not names: they are written into the hosts
// files of other containers, where a blank, '#' or a newline would add entries of their own.
func checkNames(hostname string, aliases []string) error {
	if hostname != "" && !cni.ValidHostname(hostname) {
		return invalid("invalid hostname %q: use letters, digits, '-', '_' and '.', at most 253 of them", hostname)
	}
	if len(aliases) > maxAliases {
		return invalid("too many aliases (%d): at most %d a network", len(aliases), maxAliases)
	}
	for _, a := range aliases {
		if !cni.ValidHostname(a) {
			return invalid("invalid alias %q: use letters, digits, '-', '_' and '.', at most 253 of them", a)
		}
	}
	return nil
}

// netUsers are the containers connected to network name.
func (e *Engine) netUsers(name string) []string {
	var ids []string
	for id, cn := range e.nw.ctrs {
		if _, ok := cn.Networks[name]; ok {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

// matchNetworkFilter is the container list's network filter: a network's name or id.
func (e *Engine) matchNetworkFilter(f filters, nets map[string]*network.EndpointSettings) bool {
	return f.matchAny("network", func(v string) bool {
		for name, ep := range nets {
			if v == name || (len(v) >= 12 && strings.HasPrefix(ep.NetworkID, v)) || v == ep.NetworkID {
				return true
			}
		}
		return false
	})
}

// ensureAttached gives a container made under another run's network (an engine before this
// one, whose network went with it) an attachment on this engine's run before it starts: its
// spec's network namespace is moved to the new one.
func (e *Engine) ensureAttached(ctx context.Context, id string) error {
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	e.netLoad()
	cn := e.nw.ctrs[id]
	if cn == nil {
		return nil
	}
	if e.cfg.Net != nil && strings.HasPrefix(filepath.Base(cn.NetNS), "moatc-"+e.cfg.NetRun+".") {
		if _, err := os.Stat(cn.NetNS); err == nil {
			return nil
		}
	}
	if e.cfg.Net == nil {
		return invalid("container %s was made on a network this engine does not have (it runs with --no-network): remove it and create it again", id[:12])
	}
	a, err := e.cfg.Net.Attach(ctx, e.cfg.NetRun, cn.Key)
	if err != nil {
		return err
	}
	cc, err := e.cfg.Client.LoadContainer(ctx, id)
	if err != nil {
		return err
	}
	s, err := cc.Spec(ctx)
	if err != nil {
		return err
	}
	if s.Linux != nil {
		for i, n := range s.Linux.Namespaces {
			if n.Type == specs.NetworkNamespace {
				s.Linux.Namespaces[i].Path = a.NetNSPath
			}
		}
	}
	if err := cc.Update(ctx, containerd.UpdateContainerOpts(containerd.WithSpec(s))); err != nil {
		return fmt.Errorf("moving container %s to the run's network: %w", id[:12], err)
	}
	cn.NetNS, cn.IP, cn.Gateway, cn.Subnet = a.NetNSPath, a.IP, a.Gateway, a.Subnet
	if e.nw.run == nil {
		return fmt.Errorf("moving container %s to the run's network: the run %s has no network", id[:12], e.cfg.NetRun)
	}
	if resolv, err := os.ReadFile(e.nw.run.ResolvPath); err == nil {
		os.WriteFile(filepath.Join(e.containerDir(id), "resolv.conf"), resolv, 0o644)
	}
	if err := e.saveCtrNet(e.containerDir(id), cn); err != nil {
		return err
	}
	e.writeHostsLocked()
	return nil
}

// hostName is a name --add-host may give: nothing that could start another line or field of
// the hosts file.
var hostName = regexp.MustCompile(`^[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})$`)

// extraHosts turns --add-host's NAME:IP (or NAME=IP) entries into hosts file lines.
// host-gateway is the run's ports address, where the engine's published ports are (the
// host itself is closed to runs).
func extraHosts(entries []string, gateway netip.Addr) ([]string, error) {
	var out []string
	for _, x := range entries {
		name, ip, ok := strings.Cut(x, "=")
		if !ok {
			name, ip, ok = strings.Cut(x, ":")
		}
		if !ok || !hostName.MatchString(name) {
			return nil, invalid("invalid extra host %q: write NAME:IP, e.g. db.local:10.0.0.5 or host.docker.internal:host-gateway", x)
		}
		ip = strings.TrimSuffix(strings.TrimPrefix(ip, "["), "]")
		addr := gateway
		if ip != "host-gateway" {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return nil, invalid("invalid IP address in extra host %q: %v", x, err)
			}
			addr = a
		}
		out = append(out, addr.String()+"\t"+name)
	}
	return out, nil
}
