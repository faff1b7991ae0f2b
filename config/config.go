// Package config reads a workspace's moatc.yaml (agent.yaml and moat.yaml are accepted too, for
// people coming from moat). Every error names the file, the line and the key.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/moatc/moatc/policy"
)

var grantName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// Names are the file names looked for in a workspace, in order.
var Names = []string{"moatc.yaml", "agent.yaml", "moat.yaml"}

// File is a parsed moatc.yaml. Zero values mean "not set".
type File struct {
	Path        string
	Sum         string // sha256 of the bytes parsed, hex: what `moatc trust` records
	Name        string
	Image       string
	Command     []string
	Env         map[string]string
	Mounts      []Item // HOST:CONTAINER[:ro|rw]
	Interactive *bool
	Sandbox     string // "", "gvisor" or "none"
	Memory      int64  // bytes
	CPUs        float64
	Ports       []Item // publish specs, [IP:]HOST:CONTAINER[/proto]
	Network     string // "", "default" or "none"
	HostPorts   []Item // network.host: host ports the run may reach, PORT[/tcp|udp]
	NetPolicy   string // network.policy: "", "permissive" or "strict"
	Allow       []Item // network.allow: hosts a strict run may reach, host, *.domain, host:port
	Grants      []Item // grants: names of stored credentials the proxy adds for the run
	Pids        int64  // container.pids: the most processes and threads at once
	// Dependencies are the entries of `dependencies:`, each with its line for error messages.
	Dependencies []Item
	BaseImage    string
	// Agent is `agent:`, the coding agent `moatc run` starts in this workspace.
	Agent *Agent
	// Policy lists the settings that widen what the workload reaches. They take effect only
	// when the person has trusted this exact content (package trust); see policy.go.
	Policy []Setting
}

// Agent is the `agent:` key: a name (claude), or a mapping with name, version and args.
type Agent struct {
	Name    string
	Version string
	Args    []string
	Line    int
}

func parseAgent(v *yaml.Node) (*Agent, error) {
	a := &Agent{Line: v.Line}
	switch v.Kind {
	case yaml.ScalarNode:
		return a, scalar(v, &a.Name, "an agent such as claude")
	case yaml.MappingNode:
	default:
		return nil, errors.New("write an agent's name (agent: claude) or a mapping with name, version and args")
	}
	for j := 0; j+1 < len(v.Content); j += 2 {
		k, val := v.Content[j], v.Content[j+1]
		var err error
		switch k.Value {
		case "name":
			err = scalar(val, &a.Name, "an agent such as claude")
		case "version":
			err = scalar(val, &a.Version, "a version such as 2.1.3")
		case "args":
			err = strings_(val, &a.Args)
		default:
			err = errors.New("unknown key (known: name, version, args)")
		}
		if err != nil {
			return nil, &Error{Line: val.Line, Key: "agent." + k.Value, Msg: err.Error()}
		}
	}
	if a.Name == "" {
		return nil, errors.New("the mapping needs name, e.g. name: claude")
	}
	return a, nil
}

// Item is a list entry with the line it was written on.
type Item struct {
	Text string
	Line int
}

// Error is a problem at a place in a config file.
type Error struct {
	Path string
	Line int
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.Path, e.Msg)
	}
	if e.Key == "" {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s: %s", e.Path, e.Line, e.Key, e.Msg)
}

func (f *File) parseNetwork(v *yaml.Node, e func(*yaml.Node, string, string, ...any) error) error {
	mode := func(n *yaml.Node, key string) error {
		if err := scalar(n, &f.Network, "default or none"); err != nil {
			return e(n, key, "%v", err)
		}
		if f.Network != "default" && f.Network != "none" {
			return e(n, key, "%q is not a network mode: write default (a private network with egress) or none (loopback only)", f.Network)
		}
		return nil
	}
	switch v.Kind {
	case yaml.ScalarNode:
		return mode(v, "network")
	case yaml.MappingNode:
	default:
		return e(v, "network", "write default or none, or a mapping with mode and host")
	}
	for j := 0; j+1 < len(v.Content); j += 2 {
		k, val := v.Content[j], v.Content[j+1]
		key := "network." + k.Value
		var err error
		switch k.Value {
		case "mode":
			err = mode(val, key)
		case "host":
			if f.HostPorts, err = items(val); err != nil {
				var ce *Error
				if errors.As(err, &ce) {
					return e(&yaml.Node{Line: ce.Line}, key, "%s", ce.Msg)
				}
				return e(val, key, "%v: write host ports as [8080, 5432, 53/udp]", err)
			}
		case "policy":
			if err = scalar(val, &f.NetPolicy, "permissive or strict"); err == nil {
				if _, perr := policy.ParseMode(f.NetPolicy); perr != nil {
					return e(val, key, "%v", perr)
				}
			}
		case "allow":
			if f.Allow, err = items(val); err != nil {
				var ce *Error
				if errors.As(err, &ce) {
					return e(&yaml.Node{Line: ce.Line}, key, "%s", ce.Msg)
				}
				return e(val, key, "%v: write hosts as [api.example.com, \"*.example.org\", example.net:8443]", err)
			}
			for _, it := range f.Allow {
				if _, perr := policy.ParsePattern(it.Text); perr != nil {
					return e(&yaml.Node{Line: it.Line}, key, "%v", perr)
				}
			}
		default:
			return e(k, key, "unknown key (known: network.mode, network.host, network.policy, network.allow)")
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// later lists keys moat users may have that moatc does not support yet: naming them beats a
// confusing "unknown key".
var later = map[string]bool{
	"secrets": true, "services": true, "hooks": true,
}

// Parse parses the bytes of a config file found at path.
func Parse(path string, data []byte) (*File, error) {
	sum := sha256.Sum256(data)
	f := &File{Path: path, Sum: hex.EncodeToString(sum[:])}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(path, err)
	}
	if len(doc.Content) == 0 {
		return f, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Line, Msg: "the file must be a mapping of keys, e.g. `image: debian:bookworm-slim`"}
	}
	e := func(n *yaml.Node, key, format string, a ...any) error {
		return &Error{Path: path, Line: n.Line, Key: key, Msg: fmt.Sprintf(format, a...)}
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		key := k.Value
		if seen[key] {
			return nil, e(k, key, "appears twice")
		}
		seen[key] = true
		var err error
		switch key {
		case "name":
			err = scalar(v, &f.Name, "a string")
		case "image":
			err = scalar(v, &f.Image, "an image reference such as debian:bookworm-slim")
		case "command":
			if v.Kind == yaml.ScalarNode {
				f.Command = []string{"/bin/sh", "-c", v.Value}
			} else {
				err = strings_(v, &f.Command)
			}
		case "env":
			if v.Kind != yaml.MappingNode {
				return nil, e(v, key, "must be a mapping of NAME: value")
			}
			f.Env = map[string]string{}
			for j := 0; j+1 < len(v.Content); j += 2 {
				if v.Content[j+1].Kind != yaml.ScalarNode {
					return nil, e(v.Content[j+1], "env."+v.Content[j].Value, "must be a string")
				}
				f.Env[v.Content[j].Value] = v.Content[j+1].Value
			}
		case "mounts":
			f.Mounts, err = items(v)
		case "interactive":
			var b bool
			if err = v.Decode(&b); err == nil {
				f.Interactive = &b
			} else {
				err = errors.New("must be true or false")
			}
		case "sandbox":
			err = scalar(v, &f.Sandbox, "gvisor or none")
			if err == nil && f.Sandbox != "gvisor" && f.Sandbox != "none" {
				err = fmt.Errorf("%q is not a sandbox: write gvisor (the default) or none", f.Sandbox)
			}
		case "container":
			err = f.parseContainer(v, e)
		case "ports":
			f.Ports, err = items(v)
		case "dependencies":
			f.Dependencies, err = items(v)
		case "base_image":
			err = scalar(v, &f.BaseImage, "an image reference such as debian:bookworm-slim")
		case "network":
			err = f.parseNetwork(v, e)
		case "agent":
			f.Agent, err = parseAgent(v)
		case "grants":
			if f.Grants, err = items(v); err == nil {
				for _, it := range f.Grants {
					if !grantName.MatchString(it.Text) {
						return nil, e(&yaml.Node{Line: it.Line}, key, "%q is not a grant name: write names stored with `moatc grant`, e.g. [github, anthropic]", it.Text)
					}
				}
			}
		default:
			if later[key] {
				return nil, e(k, key, "is not supported by this version of moatc yet; remove it to run")
			}
			return nil, e(k, key, "unknown key (known: %s)", strings.Join(known(), ", "))
		}
		if err != nil {
			var ce *Error
			if errors.As(err, &ce) {
				if ce.Path == "" {
					ce.Path = path
					if ce.Key == "" {
						ce.Key = key
					}
				}
				return nil, ce
			}
			return nil, e(v, key, "%v", err)
		}
		f.classify(k, v)
	}
	return f, nil
}

func (f *File) parseContainer(v *yaml.Node, e func(*yaml.Node, string, string, ...any) error) error {
	if v.Kind != yaml.MappingNode {
		return e(v, "container", "must be a mapping with memory, cpus and pids")
	}
	for j := 0; j+1 < len(v.Content); j += 2 {
		k, val := v.Content[j], v.Content[j+1]
		key := "container." + k.Value
		switch k.Value {
		case "memory":
			m, err := ParseMemory(val.Value)
			if err != nil || val.Kind != yaml.ScalarNode {
				return e(val, key, "%q is not a size: write e.g. 512m or 2g", val.Value)
			}
			f.Memory = m
		case "cpus":
			c, err := strconv.ParseFloat(val.Value, 64)
			if err != nil || c <= 0 || val.Kind != yaml.ScalarNode {
				return e(val, key, "%q is not a number of CPUs: write e.g. 1.5", val.Value)
			}
			f.CPUs = c
		case "pids":
			n, err := strconv.ParseInt(val.Value, 10, 64)
			if err != nil || n < 1 || val.Kind != yaml.ScalarNode {
				return e(val, key, "%q is not a number of processes: write e.g. 512", val.Value)
			}
			f.Pids = n
		default:
			return e(k, key, "unknown key (known: container.memory, container.cpus, container.pids)")
		}
	}
	return nil
}

func known() []string {
	k := []string{"name", "image", "command", "env", "mounts", "interactive", "sandbox", "container", "ports", "network", "dependencies", "base_image", "grants", "agent"}
	sort.Strings(k)
	return k
}

func scalar(v *yaml.Node, dst *string, what string) error {
	if v.Kind != yaml.ScalarNode || v.Tag == "!!null" {
		return fmt.Errorf("must be %s", what)
	}
	*dst = v.Value
	return nil
}

// items reads a list of strings (numbers allowed, as in `ports: [8080:80]`) with their lines.
func items(v *yaml.Node) ([]Item, error) {
	if v.Kind != yaml.SequenceNode {
		return nil, errors.New("must be a list, e.g. [a, b] or one `- a` per line")
	}
	out := []Item{}
	for _, c := range v.Content {
		if c.Kind != yaml.ScalarNode {
			return nil, &Error{Line: c.Line, Msg: "list items must be strings"}
		}
		out = append(out, Item{Text: c.Value, Line: c.Line})
	}
	return out, nil
}

func strings_(v *yaml.Node, dst *[]string) error {
	if v.Kind != yaml.SequenceNode {
		return errors.New("must be a list of strings")
	}
	for _, c := range v.Content {
		if c.Kind != yaml.ScalarNode {
			return &Error{Line: c.Line, Msg: "list items must be strings"}
		}
		*dst = append(*dst, c.Value)
	}
	return nil
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into file:line form.
func syntaxError(path string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if strings.HasPrefix(msg, "line ") {
		rest := msg[len("line "):]
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, perr := strconv.Atoi(rest[:i]); perr == nil {
				line, msg = n, strings.TrimSpace(rest[i+1:])
			}
		}
	}
	return &Error{Path: path, Line: line, Msg: "invalid YAML: " + msg}
}

// ParseMemory parses sizes such as 512m, 2g, 1024k or a plain number of bytes, at least the
// 6m a container needs.
func ParseMemory(s string) (int64, error) {
	b, err := ParseSize(s)
	if err != nil {
		return 0, err
	}
	if b < 6<<20 {
		return 0, fmt.Errorf("%s is below the 6m a container needs at least", s)
	}
	return b, nil
}

// ParseSize parses a positive size such as 512m, 2g, 1024k or a plain number of bytes.
func ParseSize(s string) (int64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	num := strings.TrimRight(s, "bkmg")
	mult, ok := map[string]int64{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}[s[len(num):]]
	n, err := strconv.ParseFloat(num, 64)
	// !(n > 0) also refuses NaN; the upper bound keeps the conversion below defined.
	if !ok || err != nil || !(n > 0) || n*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("%q is not a size: write e.g. 512m or 2g", s)
	}
	return int64(n * float64(mult)), nil
}

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
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(s); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w (known keys: address, namespace, pool, cni_plugin_dir, cni_conf_dir, upstream_ca)", path, err)
	}
	return s, nil
}
