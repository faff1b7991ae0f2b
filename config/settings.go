package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// Settings is moatc's own configuration ($MOATC_HOME/config.yaml): which containerd to use.
type Settings struct {
	Address   string `yaml:"address"`
	Namespace string `yaml:"namespace"`
	Pool      string `yaml:"pool"` // runs' address pool, e.g. 10.213.0.0/16
	// CNIPluginDir and CNIConfDir override where CNI plugins are found (default: the prefix's
	// lib/cni, /usr/lib/cni, /opt/cni/bin) and where per-run network configs go.
	CNIPluginDir string `yaml:"cni_plugin_dir"`
	CNIConfDir   string `yaml:"cni_conf_dir"`
	// UpstreamCA is a PEM bundle runs' proxies trust for upstream servers besides the system's
	// (a host behind a TLS-intercepting proxy of its own).
	UpstreamCA string `yaml:"upstream_ca"`
}

var settingWants = map[string]want{
	"address":        {"a containerd socket, a string", "address: /run/containerd/containerd.sock"},
	"namespace":      {"a containerd namespace, a string", "namespace: moatc"},
	"pool":           {"an IPv4 prefix, a string", "pool: 10.213.0.0/16"},
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
		"address": &s.Address, "namespace": &s.Namespace, "pool": &s.Pool,
		"cni_plugin_dir": &s.CNIPluginDir, "cni_conf_dir": &s.CNIConfDir, "upstream_ca": &s.UpstreamCA,
	}
	p := &parser{path: path}
	known := []string{"address", "namespace", "pool", "cni_plugin_dir", "cni_conf_dir", "upstream_ca"}
	err = p.mapping(root, "", known, func(_, v *yaml.Node, key string) error {
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
