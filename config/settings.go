package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Settings is moatc's own configuration ($MOATC_HOME/config.yaml): which containerd to use.
type Settings struct {
	Address   string `yaml:"address"`
	Namespace string `yaml:"namespace"`
	// NetworkPool is runs' address pool, e.g. 10.213.0.0/16 (network_pool; `pool:` written as
	// a string is read as this too, its older spelling).
	NetworkPool string `yaml:"network_pool"`
	// WarmPool is the warm pool (`pool:` as a mapping): members kept per runtime, "gvisor"
	// and "runc". Nil means DefaultWarmPool.
	WarmPool map[string]PoolClass `yaml:"-"`
	// CNIPluginDir and CNIConfDir override where CNI plugins are found (default: the prefix's
	// lib/cni, /usr/lib/cni, /opt/cni/bin) and where per-run network configs go.
	CNIPluginDir string `yaml:"cni_plugin_dir"`
	CNIConfDir   string `yaml:"cni_conf_dir"`
	// UpstreamCA is a PEM bundle runs' proxies trust for upstream servers besides the system's
	// (a host behind a TLS-intercepting proxy of its own).
	UpstreamCA string `yaml:"upstream_ca"`
}

// PoolClass is one runtime's warm members: how many, booted with which limits. A run takes
// a member only when its own limits are these (a sandbox's are fixed when it boots).
type PoolClass struct {
	Size   int
	Memory int64   // bytes; 0 is unlimited
	CPUs   float64 // 0 is unlimited
	Pids   int64   // 0: a run's default
}

// DefaultWarmPool is the pool without a `pool:` key: two booted gVisor sandboxes and two
// networks made ahead for runc runs, with a run's default limits.
func DefaultWarmPool() map[string]PoolClass {
	return map[string]PoolClass{"gvisor": {Size: 2}, "runc": {Size: 2}}
}

var settingWants = map[string]want{
	"address":        {"a containerd socket, a string", "address: /run/containerd/containerd.sock"},
	"namespace":      {"a containerd namespace, a string", "namespace: moatc"},
	"network_pool":   {"an IPv4 prefix, a string", "network_pool: 10.213.0.0/16"},
	"pool":           {"the warm pool, a mapping of runtime to size", "pool: {gvisor: 2, runc: 2}"},
	"pool.gvisor":    {"a number of sandboxes, or a mapping of size, memory, cpus and pids", "gvisor: 2"},
	"pool.runc":      {"a number of networks, or a mapping of size, memory, cpus and pids", "runc: 2"},
	"cni_plugin_dir": {"a directory, a string", "cni_plugin_dir: /usr/lib/cni"},
	"cni_conf_dir":   {"a directory, a string", "cni_conf_dir: /var/lib/moatc/cni/conf"},
	"upstream_ca":    {"a PEM file, a string", "upstream_ca: /etc/ssl/corp-proxy.pem"},
}

// LoadSettings reads path; a missing file yields empty settings.
func LoadSettings(path string) (*Settings, error) {
	s := &Settings{}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	root, err := document(path, b)
	if err != nil || root == nil {
		return s, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Line, Msg: "the file must be a mapping of keys, e.g. `namespace: moatc`"}
	}
	fields := map[string]*string{
		"address": &s.Address, "namespace": &s.Namespace, "pool": &s.NetworkPool, "network_pool": &s.NetworkPool,
		"cni_plugin_dir": &s.CNIPluginDir, "cni_conf_dir": &s.CNIConfDir, "upstream_ca": &s.UpstreamCA,
	}
	p := &parser{path: path}
	known := []string{"address", "namespace", "network_pool", "pool", "cni_plugin_dir", "cni_conf_dir", "upstream_ca"}
	err = p.mapping(root, "", known, func(_, v *yaml.Node, key string) error {
		if key == "pool" && v.Kind == yaml.MappingNode {
			var err error
			s.WarmPool, err = p.warmPool(v)
			return err
		}
		if !is(v, "!!str") {
			return p.typeErr(v, key, settingWants[key])
		}
		*fields[key] = v.Value
		if key == "address" {
			a, err := SocketPath(v.Value)
			if err != nil {
				return p.errAt(v, key, "%v", err)
			}
			s.Address = a
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// SocketPath turns a containerd address, /run/x.sock or unix:///run/x.sock, into the
// socket's path. Anything else is refused: containerd's API is served on a unix socket only.
func SocketPath(addr string) (string, error) {
	p := addr
	if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
		p = rest
	} else if i := strings.Index(addr, "://"); i >= 0 {
		return "", fmt.Errorf("%q is not a containerd socket: moatc reaches containerd only on a unix socket; write its path, like /run/containerd/containerd.sock or unix:///run/containerd/containerd.sock", Printable(addr, 200))
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%q is not a containerd socket: give the socket's absolute path, like /run/containerd/containerd.sock or unix:///run/containerd/containerd.sock", Printable(addr, 200))
	}
	return filepath.Clean(p), nil
}

// warmPool reads `pool:`: per runtime, a size, or a mapping of size and the members' limits.
func (p *parser) warmPool(n *yaml.Node) (map[string]PoolClass, error) {
	out := DefaultWarmPool()
	err := p.mapping(n, "pool", []string{"gvisor", "runc"}, func(k, v *yaml.Node, key string) error {
		var c PoolClass
		size := v
		if v.Kind == yaml.MappingNode {
			size = nil
			err := p.mapping(v, key, []string{"size", "memory", "cpus", "pids"}, func(_, w *yaml.Node, sub string) error {
				bad := func(format string) error { return p.errAt(w, sub, format, Printable(w.Value, 80)) }
				var err error
				switch strings.TrimPrefix(sub, key+".") {
				case "size":
					size = w
				case "memory":
					if !is(w, "!!str", "!!int") {
						return bad("%q is not a size: write e.g. 512m or 2g")
					}
					if c.Memory, err = ParseMemory(w.Value); err != nil {
						return bad("%q is not a size: write e.g. 512m or 2g")
					}
				case "cpus":
					if c.CPUs, err = strconv.ParseFloat(w.Value, 64); !is(w, "!!int", "!!float") || err != nil || !(c.CPUs > 0) {
						return bad("%q is not a number of CPUs: write e.g. 1.5")
					}
				case "pids":
					if c.Pids, err = strconv.ParseInt(w.Value, 10, 64); !is(w, "!!int") || err != nil || c.Pids < 1 {
						return bad("%q is not a number of processes: write e.g. 512")
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			if size == nil {
				return p.errAt(v, key, "needs a size, like: %s: {size: 2, memory: 1g}", k.Value)
			}
			if k.Value == "runc" && c != (PoolClass{}) {
				return p.errAt(v, key, "runc members are networks only: a runc run's limits are applied when its container is made; write runc: %s", size.Value)
			}
		}
		n, err := strconv.Atoi(size.Value)
		if !is(size, "!!int") || err != nil || n < 0 || n > 64 {
			return p.errAt(size, key, "%q is not a pool size: write a number from 0 (no warm starts) to 64", Printable(size.Value, 80))
		}
		c.Size = n
		out[k.Value] = c
		return nil
	})
	return out, err
}
