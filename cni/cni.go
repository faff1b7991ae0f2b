// Package cni gives every moatc run its own network, made before the run's container exists
// and removed from what is on disk alone, so a new process can undo the work of one killed -9.
//
//	m, err := cni.New(cni.Config{ConfDir: home + "/cni/conf", StateDir: home + "/cni/state"})
//	n, err := m.Setup(ctx, runID, cni.Options{Hostname: h, Ports: p}) // before the container is created
//	// OCI spec: oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: n.NetNSPath}),
//	// bind mounts n.HostsPath -> /etc/hosts and n.ResolvPath -> /etc/resolv.conf.
//	go n.Proxy.Serve(ctx)                          // published ports work while this runs
//	...
//	err = m.Teardown(ctx, runID)                   // on every exit path; idempotent
//	ids, err := m.Leftovers()                      // run ids with network state left, for `moatc clean`
//
// Other API: ParsePublish parses -p specs, ParseHostPort --host-port ones; Manager.Load reads a
// run's Network back (without its Proxy); SetupShared makes a network BuildKit attaches its RUN steps to; Prune removes moatc's chains
// once no run uses them.
//
// What a run R gets (every name derives from R, so Teardown needs only the id):
//   - a named netns /run/netns/moatc-R (visible to `ip netns`);
//   - CNI ADD of two networks into it: loopback (lo) and "moatc-R" (eth0): a bridge mc-R of its
//     own holding the gateway address .1 of a /24 cut from Pool, a veth, and host-local IPAM giving
//     the run the address .2; conflist in ConfDir/moatc-R.conflist, leases in StateDir/ipam/moatc-R,
//     libcni's result cache in StateDir/cache;
//   - StateDir/runs/R/: network.json (the record, written atomically before anything is created
//     and removed last), hosts and resolv.conf;
//   - iptables rules commented "moatc run R: <why>" (see runRules in firewall.go), in moatc's own
//     chains MOATC-INPUT and MOATC-FORWARD: forged source addresses dropped, the host closed but
//     for the run's HostPorts at its gateway, no traffic to other runs or link-local addresses,
//     egress accepted and masqueraded by moatc's own rule (the bridge plugin's ipMasq is off: it
//     leaks rules under gVisor), replies let back in, nothing else forwarded into the run. Runs
//     reach the outside only. Options.Listen opens moatc's own services (the run's proxy) on the
//     gateway during Setup; their ports are accepted before the host is closed. Options.Strict
//     drops everything forwarded from the bridge and opens no host ports: the run reaches its
//     services alone (and its resolv.conf has no nameserver).
//
// Subnets are allocated under a flock on StateDir/lock, so concurrent Setups in any number of
// processes get distinct subnets. Setup refuses a pool that overlaps a host route (other than
// another run's bridge) and says how to pick another (Config.Pool, or MOATC_NETWORK_POOL).
//
// IPv6: off. Inside the netns new interfaces start with disable_ipv6=1, so eth0 never has an
// IPv6 address or route (lo keeps ::1); on the host, IPv6 is disabled on the run's bridge and
// veth, so even a gVisor sandbox (which has its own network stack and ignores the netns sysctls)
// cannot exchange IPv6 with the host. No ip6tables rules are needed.
//
// DNS: the run's resolv.conf carries the host's IPv4 nameservers and search/options lines.
// Loopback nameservers (127.0.0.53, a local dnsmasq) cannot be reached from a run: they are
// replaced by systemd-resolved's upstream servers when /run/systemd/resolve/resolv.conf exists;
// otherwise the file has no nameserver and a comment saying why (lookups fail at once rather than
// leak to a public resolver). Config.DNS overrides all of this.
//
// Published ports: a userspace proxy in the calling process (Network.Proxy), not the portmap
// plugin. Measured here, portmap made ADD 50-90 ms and DEL about 130 ms slower (it runs
// iptables once per rule), left its shared CNI-HOSTPORT-* chains behind after DEL, and for
// 127.0.0.1 it sets route_localnet on the bridge, which lets a run's root send packets to the
// host's 127.0.0.1 services unless more rules block it; a process killed -9 before DEL also
// leaves its DNAT rules. The proxy binds the host ports first thing in Setup (the free-port check
// and the reservation in one step), its sockets die with the process, and it works alike for
// runc and gVisor. The price: the container sees connections coming from the gateway address,
// and ports answer only while Proxy.Serve runs. Published ports are out of every run's reach:
// the host is closed to runs.
//
// Rootless (Config.Kit set), all of this happens inside rootlesskit's network namespace, ports
// are published through rootlesskit's port driver instead of Proxy, and the rules also close
// the user's host beyond slirp4netns; see rootless.go.
//
// Timing on the project's 2-core VM: Setup 15-40 ms (median ~20: two plugin processes in
// parallel for lo and eth0, one iptables-restore, one fsync); Teardown 40-85 ms (median ~65),
// mostly the kernel deleting the bridge (~35 ms, the same with `ip link del`).
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/rootless"
	"golang.org/x/sys/unix"
)

// Config says where moatc keeps network state and which addresses runs get.
type Config struct {
	Prefix     string       // where `make setup` installed the stack; default $MOATC_PREFIX, else /opt/moatc
	PluginDirs []string     // default Prefix/lib/cni, /usr/lib/cni, /opt/cni/bin
	ConfDir    string       // per-run conflists, e.g. MOATC_HOME/cni/conf (required)
	StateDir   string       // records, leases, lock, libcni cache: MOATC_HOME/cni/state (required)
	Pool       netip.Prefix // IPv4, cut into one /24 per run; default $MOATC_NETWORK_POOL, else DefaultPool
	DNS        []netip.Addr // nameservers for runs; default: the host's (see the package doc)
	// DeleteLinkCommand, when set, returns the argv of a process that deletes link NAME
	// (moatc's `_link-del NAME`): a run's bridge is then deleted by that process, which outlives
	// the caller (see removeBridge). Unset, the bridge is deleted in place.
	DeleteLinkCommand func(name string) []string
	// Kit, when set, is the rootlesskit whose network namespace this process and the networks
	// are in (rootless moatc): ports are published through its port driver, and the rules
	// also close the user's host, outside the namespace (see rootless.go).
	Kit *rootless.Kit
}

// DefaultPool is the address pool runs' subnets come from unless configured otherwise.
var DefaultPool = netip.MustParsePrefix("10.213.0.0/16")

// PoolEnv names the environment variable that sets the pool when Config.Pool is unset.
const PoolEnv = "MOATC_NETWORK_POOL"

// Network is a run's network as Setup made it.
type Network struct {
	RunID      string
	NetNSPath  string       // the netns to put in the OCI spec
	IP         netip.Addr   // the run's address (eth0)
	Gateway    netip.Addr   // the host's address on the run's bridge; "moatc-host" in HostsPath
	Subnet     netip.Prefix // the run's /24
	Ports      []Port       // published ports, defaults filled in
	HostsPath  string       // bind-mount to /etc/hosts
	ResolvPath string       // bind-mount to /etc/resolv.conf
	Proxy      *Proxy       `json:"-"` // forwards Ports; nil without ports (and rootless); Serve it for the run's lifetime
	// Outside is set when moatc is rootless: the host is reached through slirp4netns
	// (moatc-host's ports at Outside.HostLoopback).
	Outside *Outside
}

// Manager makes and removes runs' networks.
type Manager struct {
	cfg Config

	mu      sync.Mutex
	proxies map[string]*Proxy
	kit     rootlessState

	trace func(step string) // tests: called after each step of Setup and Teardown
}

func (m *Manager) step(name string) {
	if m.trace != nil {
		m.trace(name)
	}
}

// New checks cfg and fills in defaults. It touches nothing on the host, so Teardown and
// Leftovers work even where Setup would not.
func New(cfg Config) (*Manager, error) {
	if cfg.ConfDir == "" || cfg.StateDir == "" {
		return nil, errors.New("configuring networks: ConfDir and StateDir are required")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = os.Getenv("MOATC_PREFIX")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/opt/moatc"
	}
	if len(cfg.PluginDirs) == 0 {
		cfg.PluginDirs = []string{filepath.Join(cfg.Prefix, "lib", "cni"), "/usr/lib/cni", "/opt/cni/bin"}
	}
	if !cfg.Pool.IsValid() {
		cfg.Pool = DefaultPool
		if v := os.Getenv(PoolEnv); v != "" {
			p, err := netip.ParsePrefix(v)
			if err != nil {
				return nil, fmt.Errorf("configuring networks: %s=%q is not an address range; write one such as 10.213.0.0/16: %w", PoolEnv, v, err)
			}
			cfg.Pool = p
		}
	}
	p := cfg.Pool
	if !p.Addr().Is4() || p.Bits() < 8 || p.Bits() > 24 {
		return nil, fmt.Errorf("configuring networks: pool %s must be an IPv4 range from /8 to /24 (each run takes a /24), e.g. 10.213.0.0/16", p)
	}
	if p != p.Masked() {
		return nil, fmt.Errorf("configuring networks: pool %s must be written as its network address, %s", p, p.Masked())
	}
	for _, a := range cfg.DNS {
		if !a.Unmap().Is4() {
			return nil, fmt.Errorf("configuring networks: DNS server %s: runs have no IPv6; give IPv4 servers", a)
		}
	}
	return &Manager{cfg: cfg, proxies: map[string]*Proxy{}}, nil
}

// Pool is the address pool in use.
func (m *Manager) Pool() netip.Prefix { return m.cfg.Pool }

func netName(runID string) string    { return "moatc-" + runID }
func bridgeName(runID string) string { return "mc-" + runID } // at most 15 bytes, the kernel's limit

var runIDRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,11}$`)

func checkRunID(id string) error {
	if !runIDRE.MatchString(id) {
		return fmt.Errorf("run id %q: must be 1 to 12 letters, digits, '_' or '-' (it names the bridge mc-ID)", id)
	}
	return nil
}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$`)

// ValidHostname reports whether h may be a name in a hosts file: letters, digits, '-', '_'
// and '.', at most 253 of them (no blank, '#' or newline that would add entries of its own).
func ValidHostname(h string) bool { return len(h) <= 253 && hostnameRE.MatchString(h) }

// Options are what a run asks of its network.
type Options struct {
	Hostname  string     // the run's name in its hosts file; "" means the run id
	Ports     []Port     // published ports
	HostPorts []HostPort // host ports the run may reach at its gateway (moatc-host)
	// Strict closes everything but Services: no egress, no DNS, no host ports (the proxy
	// reaches what the policy allows on the run's behalf).
	Strict bool
	// Listen, if set, opens moatc's own services for the run on its gateway address once the
	// address exists, and returns their ports; they are opened to the run before its rules
	// go in. The caller owns what it opened (close it when Setup fails).
	Listen func(gateway netip.Addr) ([]HostPort, error)
}

// Setup makes the network of a run, to be used by a container created after it. Published
// ports are bound first: a port in use fails Setup before anything is made. Any failure undoes
// everything Setup did.
func (m *Manager) Setup(ctx context.Context, runID string, o Options) (_ *Network, err error) {
	fail := func(err error) error { return fmt.Errorf("creating network %s: %w", netName(runID), err) }
	hostname, ports, err := m.checkSetup(runID, o)
	if err != nil {
		return nil, fail(err)
	}
	fw, err := findFirewall()
	if err != nil {
		return nil, fail(err)
	}
	var proxy *Proxy
	var out *Outside
	if m.cfg.Kit != nil {
		if out, err = m.outside(ctx); err != nil {
			return nil, fail(err)
		}
	} else if len(ports) > 0 {
		if proxy, err = listenPorts(netip.Addr{}, ports); err != nil {
			return nil, fail(err)
		}
	}
	m.step("ports")
	rec, err := m.allocate(record{RunID: runID, Hostname: hostname, Ports: ports, HostPorts: o.HostPorts, Strict: o.Strict, Outside: out})
	if err != nil {
		proxy.Close()
		return nil, fail(err)
	}
	m.step("allocate")
	// From here on the record exists: undo everything on failure, from the record.
	defer func() {
		if err == nil {
			return
		}
		proxy.Close()
		if uerr := m.teardown(context.WithoutCancel(ctx), runID, rec, false); uerr != nil {
			err = fmt.Errorf("%w (undoing it failed too, run `moatc clean`: %v)", err, uerr)
		}
		err = fail(err)
	}()
	// Rootless ports need the run's address; published before anything is made, a port in use
	// still fails Setup early.
	if m.cfg.Kit != nil && len(ports) > 0 {
		if err := m.publish(ctx, rec); err != nil {
			return nil, err
		}
	}
	if err := m.build(ctx, fw, rec, o); err != nil {
		return nil, err
	}
	n := m.network(rec)
	if err := m.writeRunFiles(n, rec, o.Strict); err != nil {
		return nil, err
	}
	m.keepProxy(n, proxy)
	return n, nil
}

// keepProxy hands network n the proxy of its published ports (if any), kept until Teardown.
func (m *Manager) keepProxy(n *Network, proxy *Proxy) {
	if proxy == nil {
		return
	}
	proxy.target = n.IP
	n.Proxy = proxy
	m.mu.Lock()
	m.proxies[n.RunID] = proxy
	m.mu.Unlock()
}

// checkSetup checks what Setup is asked and fills in defaults: the hostname and the ports.
func (m *Manager) checkSetup(runID string, o Options) (string, []Port, error) {
	if err := checkRunID(runID); err != nil {
		return "", nil, err
	}
	hostname := o.Hostname
	if hostname == "" {
		hostname = runID
	}
	if !ValidHostname(hostname) {
		return "", nil, fmt.Errorf("hostname %q: use letters, digits, '-', '_' and '.', at most 253 of them", hostname)
	}
	ports, err := normalizePorts(o.Ports)
	if err != nil {
		return "", nil, err
	}
	return hostname, ports, m.checkPlugins()
}

// build makes the kernel side of a run's allocated network: netns, CNI ADD, IPv6 off on the
// host's side, moatc's own services, the firewall rules.
func (m *Manager) build(ctx context.Context, fw firewall, rec *record, o Options) (err error) {
	release, err := fw.hold()
	if err != nil {
		return err
	}
	defer release()
	if err := m.link(ctx, rec); err != nil {
		return err
	}
	return m.open(ctx, fw, rec, o)
}

// link makes the netns of an allocated network and connects it (CNI ADD), IPv6 off on the
// host's side. Call it between fw.hold and its release.
func (m *Manager) link(ctx context.Context, rec *record) error {
	runID := rec.RunID
	if err := createNetNS(netnsPath(runID)); err != nil {
		return fmt.Errorf("creating netns %s: %w", netnsPath(runID), err)
	}
	m.step("netns")
	conf, err := m.confList(rec)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteNoSync(m.confPath(runID), conf, 0o600); err != nil {
		return fmt.Errorf("writing conflist: %w", err)
	}
	hostVeth, err := m.cniAdd(ctx, rec, conf)
	if err != nil {
		return err
	}
	m.step("cni add")
	for _, dev := range []string{bridgeName(runID), hostVeth} {
		if dev == "" {
			continue
		}
		if err := sysctl("net/ipv6/conf/"+dev+"/disable_ipv6", "1"); err != nil {
			return err
		}
	}
	return nil
}

// open starts moatc's services for the network and puts its rules in. Call it between
// fw.hold and its release.
func (m *Manager) open(ctx context.Context, fw firewall, rec *record, o Options) (err error) {
	if o.Listen != nil {
		if rec.Services, err = o.Listen(rec.Gateway); err != nil {
			return err
		}
		// Teardown removes the rules from the record: it must name the services too.
		if err := m.writeRecord(rec); err != nil {
			return err
		}
	}
	if err := fw.add(ctx, rec); err != nil {
		return err
	}
	m.step("firewall")
	return nil
}

// writeRunFiles writes the run's hosts file and resolv.conf.
func (m *Manager) writeRunFiles(n *Network, rec *record, strict bool) error {
	if err := atomicfile.WriteNoSync(n.HostsPath, hostsFile(rec.Hostname, rec.IP, rec.Gateway), 0o644); err != nil {
		return fmt.Errorf("writing hosts file: %w", err)
	}
	resolv := resolvFile(readHostResolv(), os.ReadFile, m.cfg.DNS)
	if strict {
		resolv = []byte("# written by moatc for this run\n# strict policy: no nameserver; moatc's proxy (HTTPS_PROXY) resolves the allowed hosts\n")
	}
	if err := atomicfile.WriteNoSync(n.ResolvPath, resolv, 0o644); err != nil {
		return fmt.Errorf("writing resolv.conf: %w", err)
	}
	return nil
}

func (m *Manager) network(r *record) *Network {
	n := m.Paths(r.RunID)
	n.IP, n.Gateway, n.Subnet, n.Ports, n.Outside = r.IP, r.Gateway, r.Subnet, r.Ports, r.Outside
	return n
}

// Paths returns where a run's network will be (netns, hosts and resolv.conf files) before
// Setup has made it: every name derives from the run id, so a caller can create the
// container while Setup runs, and needs the network itself only when the task is created.
func (m *Manager) Paths(runID string) *Network {
	return &Network{
		RunID: runID, NetNSPath: netnsPath(runID),
		HostsPath:  filepath.Join(m.runDir(runID), "hosts"),
		ResolvPath: filepath.Join(m.runDir(runID), "resolv.conf"),
	}
}

// Load returns the network of a run from its record, without a Proxy.
func (m *Manager) Load(runID string) (*Network, error) {
	if err := checkRunID(runID); err != nil {
		return nil, fmt.Errorf("loading network %s: %w", netName(runID), err)
	}
	r, err := m.readRecord(runID)
	if err != nil {
		return nil, fmt.Errorf("loading network %s: %w", netName(runID), err)
	}
	return m.network(r), nil
}

// allocate claims a free /24 for the run and writes its record, under the StateDir lock.
func (m *Manager) allocate(tmpl record) (*record, error) {
	runID := tmpl.RunID
	for _, d := range []string{m.runsDir(), m.cfg.ConfDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	unlock, err := m.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(m.runDir(runID)); err == nil {
		return nil, fmt.Errorf("run %s already has a network; tear it down first (moatc clean)", runID)
	}
	used, mtu, err := m.usedSubnets()
	if err != nil {
		return nil, err
	}
	idx, err := m.claimFree(runID, used)
	if err != nil {
		return nil, err
	}
	sub := subnetAt(m.cfg.Pool, idx)
	if err := prepareNetnsDir(); err != nil {
		os.Remove(claimPath(sub))
		return nil, err
	}
	gw := sub.Addr().Next()
	rec := &tmpl
	rec.Pool, rec.Subnet, rec.Gateway, rec.IP = m.cfg.Pool, sub, gw, gw.Next()
	rec.MTU, rec.Created, rec.PID = mtu, time.Now().UTC(), os.Getpid()
	if err := os.Mkdir(m.runDir(runID), 0o700); err != nil {
		os.Remove(claimPath(sub))
		return nil, err
	}
	if err := m.writeRecord(rec); err != nil {
		os.RemoveAll(m.runDir(runID))
		os.Remove(claimPath(sub))
		return nil, err
	}
	os.WriteFile(filepath.Join(m.cfg.StateDir, "next"), []byte(strconv.Itoa(idx+1)), 0o600) // only a hint
	return rec, nil
}

// usedSubnets returns the pool's subnets this home's records and other runs' bridges hold, and
// the MTU runs get; a host route into the pool that is not a run's is an error.
func (m *Manager) usedSubnets() (map[netip.Prefix]bool, int, error) {
	recs, _, err := m.records()
	if err != nil {
		return nil, 0, err
	}
	used := map[netip.Prefix]bool{}
	for _, r := range recs {
		used[r.Subnet] = true
	}
	rts, err := routes()
	if err != nil {
		return nil, 0, err
	}
	pool := m.cfg.Pool
	mtu := 0
	for _, rt := range rts {
		// The run's MTU is the uplink's: a larger one breaks egress where ICMP is filtered.
		if rt.dst.Bits() == 0 && rt.dev != "" && (rt.table == syscall.RT_TABLE_MAIN || rt.table == 0) {
			if i, err := net.InterfaceByName(rt.dev); err == nil && (mtu == 0 || i.MTU < mtu) {
				mtu = i.MTU
			}
		}
	}
	for _, rt := range rts {
		if rt.dst.Bits() == 0 || !rt.dst.Overlaps(pool) {
			continue
		}
		// Another run's bridge (this home's or another's): its /24 is taken, not a clash.
		if strings.HasPrefix(rt.dev, "mc-") && rt.dst.Bits() == 24 && pool.Contains(rt.dst.Addr()) {
			used[rt.dst.Masked()] = true
			continue
		}
		return nil, 0, fmt.Errorf("network pool %s overlaps the host route %q, so runs could not reach what it leads to; "+
			"configure another pool (%s=%s, or the network pool setting)", pool, rt.String(), PoolEnv, suggestPool(pool.Bits(), rts))
	}
	return used, mtu, nil
}

// claimFree claims the first free subnet of the pool for runID and returns its index.
func (m *Manager) claimFree(runID string, used map[netip.Prefix]bool) (int, error) {
	pool := m.cfg.Pool
	total := 1 << (24 - pool.Bits())
	start := 0
	if b, err := os.ReadFile(filepath.Join(m.cfg.StateDir, "next")); err == nil {
		start, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	// Round robin from the last allocation, so a subnet freed a moment ago (conntrack entries,
	// ARP caches elsewhere) is the last to be reused. The claim makes it ours against other
	// homes sharing the pool.
	for i := 0; i < total; i++ {
		j := (start + i) % total
		if used[subnetAt(pool, j)] {
			continue
		}
		ok, err := m.claimSubnet(subnetAt(pool, j), runID)
		if err != nil {
			return 0, err
		}
		if ok {
			return j, nil
		}
	}
	return 0, &FullError{Pool: pool, Total: total}
}

// FullError says the address pool has no free /24 left.
type FullError struct {
	Pool  netip.Prefix
	Total int
}

func (e *FullError) Error() string {
	return fmt.Sprintf("network pool %s is full (%d runs have networks); remove stopped runs' networks with `moatc clean` or configure a larger pool (%s, or network_pool in moatc's config.yaml)", e.Pool, e.Total, PoolEnv)
}

func (m *Manager) writeRecord(rec *record) error {
	b, _ := json.MarshalIndent(rec, "", "  ")
	if err := atomicfile.Write(m.recordPath(rec.RunID), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing network record: %w", err)
	}
	return nil
}

func subnetAt(pool netip.Prefix, i int) netip.Prefix {
	b := pool.Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(i) << 8
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), 0}), 24)
}

// suggestPool names a private range of the given size that no host route overlaps.
func suggestPool(bits int, rts []route) string {
	var cands []netip.Prefix
	for o := 200; o < 255; o++ {
		cands = append(cands, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(o), 0, 0}), max(bits, 16)))
	}
	for o := 16; o < 32; o++ {
		cands = append(cands, netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(o), 0, 0}), max(bits, 16)))
	}
next:
	for _, c := range cands {
		for _, rt := range rts {
			if rt.dst.Bits() > 0 && rt.dst.Overlaps(c) {
				continue next
			}
		}
		return c.String()
	}
	return "a private range no host route uses"
}

// SetupShared makes a network that another program attaches its containers to (BuildKit's RUN
// steps) and returns its conflist: moatc allocates a /24 from the pool, makes the bridge with the
// gateway address and IPv6 off, and adds the rules every run gets (the host closed, no other
// runs, no link-local addresses, NAT egress); the program runs ADD and DEL itself, and
// host-local IPAM hands out .2 to .254. An existing one whose bridge is up is kept as it is.
// Teardown removes it.
func (m *Manager) SetupShared(ctx context.Context, id string) (_ string, err error) {
	fail := func(err error) error { return fmt.Errorf("creating network %s: %w", netName(id), err) }
	if err := checkRunID(id); err != nil {
		return "", fail(err)
	}
	if err := m.checkPlugins(); err != nil {
		return "", fail(err)
	}
	fw, err := findFirewall()
	if err != nil {
		return "", fail(err)
	}
	// Kept only when whole: the plugin would make a missing bridge itself, without the rules.
	if rec, err := m.readRecord(id); err == nil && rec.Shared {
		_, brErr := net.InterfaceByName(bridgeName(id))
		_, confErr := os.Stat(m.confPath(id))
		if brErr == nil && confErr == nil {
			found, err := fw.scan(ctx)
			if err != nil {
				return "", fail(err)
			}
			if len(found[id]) == len(runRules(rec)) {
				return m.confPath(id), nil
			}
		}
	}
	if err := m.Teardown(ctx, id); err != nil { // whatever is left of an earlier one
		return "", fail(err)
	}
	var out *Outside
	if m.cfg.Kit != nil {
		if out, err = m.outside(ctx); err != nil {
			return "", fail(err)
		}
	}
	rec, err := m.allocate(record{RunID: id, Hostname: id, Shared: true, Outside: out})
	if err != nil {
		return "", fail(err)
	}
	defer m.undo(ctx, rec, &err, fail)
	release, err := fw.hold()
	if err != nil {
		return "", err
	}
	defer release()
	if err := makeBridge(bridgeName(id), netip.PrefixFrom(rec.Gateway, rec.Subnet.Bits())); err != nil {
		return "", err
	}
	if err := fw.add(ctx, rec); err != nil {
		return "", err
	}
	conf, err := m.confList(rec)
	if err != nil {
		return "", err
	}
	if err := atomicfile.Write(m.confPath(id), conf, 0o600); err != nil {
		return "", fmt.Errorf("writing conflist: %w", err)
	}
	return m.confPath(id), nil
}

// undo, deferred once network rec is allocated, tears down what was made of it when *errp is
// set on the way out, and wraps the error with fail.
func (m *Manager) undo(ctx context.Context, rec *record, errp *error, fail func(error) error) {
	if *errp == nil {
		return
	}
	if uerr := m.teardown(context.WithoutCancel(ctx), rec.RunID, rec, false); uerr != nil {
		*errp = fmt.Errorf("%w (undoing it failed too, run `moatc clean`: %v)", *errp, uerr)
	}
	*errp = fail(*errp)
}

// Teardown removes everything Setup made for the run, from what is on disk and in the kernel:
// it works after the creating process was killed, for a half-made network, and for one already
// removed (then it does nothing). It closes the run's Proxy when this Manager made it. Kill the
// run's container first: a netns still in use lives on (without its veth) until it exits. The
// record is removed last, only when everything else is gone, so a failed Teardown can be retried.
func (m *Manager) Teardown(ctx context.Context, runID string) error {
	return m.remove(ctx, runID, false)
}

// Release is Teardown for the end of a run, when the caller is about to exit: everything is
// removed before it returns but the run's bridge, whose deletion (the slow part) is left to a
// detached process. Clean-up paths that must leave nothing (clean, reconcile) use Teardown.
func (m *Manager) Release(ctx context.Context, runID string) error {
	return m.remove(ctx, runID, true)
}

func (m *Manager) remove(ctx context.Context, runID string, detachBridge bool) error {
	if err := checkRunID(runID); err != nil {
		return fmt.Errorf("removing network %s: %w", netName(runID), err)
	}
	m.mu.Lock()
	if p := m.proxies[runID]; p != nil {
		p.Close()
		delete(m.proxies, runID)
	}
	m.mu.Unlock()
	// Two processes may tear one network down at once (a run's supervisor and `destroy
	// --force`): one's CNI DEL would write into the lease directory the other is removing.
	// They take turns on the run's state directory; the second finds what is left, if anything.
	if d, err := os.Open(m.runDir(runID)); err == nil {
		defer d.Close()
		if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
			return fmt.Errorf("removing network %s: %w", netName(runID), err)
		}
	}
	rec, _ := m.readRecord(runID) // none or unreadable: rules are found by their tag instead
	if err := m.teardown(ctx, runID, rec, detachBridge); err != nil {
		return fmt.Errorf("removing network %s: %w", netName(runID), err)
	}
	return nil
}

func (m *Manager) teardown(ctx context.Context, runID string, rec *record, detachBridge bool) error {
	// The firewall, the CNI DEL and the bridge are independent: remove them side by side, since
	// each mostly waits on the kernel (RCU grace periods when rules and links go).
	var mu sync.Mutex
	var errs []error
	collect := func(err error) {
		if err != nil {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
	}
	// Attachments first: their DEL needs the conflist and leases in the run's directory.
	collect(m.detachAll(ctx, runID))
	var wg sync.WaitGroup
	wg.Go(func() {
		if fw, err := findFirewall(); err == nil { // without iptables there can be no rules
			collect(fw.remove(ctx, runID, rec))
		}
		m.step("firewall")
	})
	wg.Go(func() {
		// DEL while the netns and the cached result exist; best effort, since what the plugins
		// remove (the veth, the lease) is removed here as well.
		_ = m.cniDel(ctx, runID)
		m.step("cni del")
		collect(removeNetNS(netnsPath(runID)))
	})
	wg.Go(func() {
		collect(m.removeBridge(bridgeName(runID), detachBridge))
		m.step("bridge")
	})
	if m.cfg.Kit != nil {
		wg.Go(func() {
			// Without a record the run's address is unknown; its ports then forward to an
			// address no record holds, and go with the others of that kind.
			var ip netip.Addr
			if rec != nil {
				ip = rec.IP
			}
			collect(m.unpublish(ctx, ip))
		})
	}
	wg.Wait()
	files := append([]string{filepath.Join(m.ipamDir(), netName(runID)), m.confPath(runID)}, m.cacheFiles(runID)...)
	for _, f := range files {
		collect(os.RemoveAll(f))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// The claim goes before the record: a crash in between leaves a claim that is stale (no
	// record, no bridge), which the next allocation takes over.
	if err := m.releaseClaims(runID); err != nil {
		return err
	}
	return os.RemoveAll(m.runDir(runID))
}

// Leftovers lists the runs that still have network state: a record, conflist or lease in this
// Manager's directories, or a bridge or iptables rule on the host in its pool. A netns named
// moatc-ID with none of these is not listed: another moatc home may own it.
func (m *Manager) Leftovers() ([]string, error) {
	ids := map[string]bool{}
	_, dirs, err := m.records()
	if err != nil {
		return nil, fmt.Errorf("listing network leftovers: %w", err)
	}
	for _, id := range dirs {
		ids[id] = true
	}
	add := func(dir, prefix, suffix string) error {
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		for _, e := range ents {
			n := e.Name()
			if strings.HasPrefix(n, prefix) && strings.HasSuffix(n, suffix) {
				if id := strings.TrimSuffix(strings.TrimPrefix(n, prefix), suffix); checkRunID(id) == nil {
					ids[id] = true
				}
			}
		}
		return nil
	}
	if err := add(m.cfg.ConfDir, "moatc-", ".conflist"); err != nil {
		return nil, fmt.Errorf("listing network leftovers: %w", err)
	}
	if err := add(m.ipamDir(), "moatc-", ""); err != nil {
		return nil, fmt.Errorf("listing network leftovers: %w", err)
	}
	// Bridges and rules are host-wide: those of networks another home claims are its own.
	others := m.othersClaims()
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, fmt.Errorf("listing network leftovers: %w", err)
	}
	for _, i := range ifs {
		id, ok := strings.CutPrefix(i.Name, "mc-")
		if !ok || checkRunID(id) != nil || others[id] {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && m.cfg.Pool.Contains(p.Addr()) {
				ids[id] = true
			}
		}
	}
	if fw, err := findFirewall(); err == nil {
		found, err := fw.scan(context.Background())
		if err != nil {
			return nil, fmt.Errorf("listing network leftovers: %w", err)
		}
		for id, rules := range found {
			if others[id] {
				continue
			}
			for _, r := range rules {
				if inPool(r.text, m.cfg.Pool) {
					ids[id] = true
				}
			}
		}
	}
	out := make([]string, 0, len(ids))
	for id := range ids {
		out = append(out, id)
	}
	sort.Strings(out)
	return out, nil
}
