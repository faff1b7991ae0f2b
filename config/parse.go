package config

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"

	"gopkg.in/yaml.v3"

	"github.com/moatc/moatc/policy"
)

// want is what a key takes: said in its type error, with a line to copy.
type want struct{ what, like string }

var wants = map[string]want{
	"name":             {"a string", "name: web"},
	"image":            {"an image reference, a string", "image: debian:bookworm-slim"},
	"command":          {"a list of strings or a string", "command: [npm, test]"},
	"env":              {"a mapping of NAME: value", "env: {NODE_ENV: test}"},
	"env.":             {"a string, a number or true/false", `env: {DEBUG: "1"}`},
	"mounts":           {"a list of HOST:CONTAINER[:ro|rw]", "mounts: [../data:/data:ro]"},
	"interactive":      {"true or false", "interactive: true"},
	"sandbox":          {"gvisor or none", "sandbox: gvisor"},
	"container":        {"a mapping with memory, cpus and pids", "container: {memory: 2g, cpus: 2, pids: 512}"},
	"container.memory": {"a size", "container: {memory: 512m}"},
	"container.cpus":   {"a number, without quotes", "container: {cpus: 1.5}"},
	"container.pids":   {"a whole number, without quotes", "container: {pids: 512}"},
	"ports":            {"a list of [IP:]HOST:CONTAINER[/tcp|udp]", "ports: [8080:80]"},
	"network":          {"default or none, or a mapping with mode, host, policy and allow", "network: none"},
	"network.mode":     {"default or none", "network: {mode: none}"},
	"network.host":     {"a list of PORT[/tcp|udp]", "network: {host: [5432, 53/udp]}"},
	"network.policy":   {"permissive or strict", "network: {policy: strict}"},
	"network.allow":    {"a list of hosts", `network: {allow: [api.example.com, "*.example.org"]}`},
	"grants":           {"a list of grant names", "grants: [github]"},
	"dependencies":     {"a list", "dependencies: [node@20, git]"},
	"base_image":       {"an image reference, a string", "base_image: debian:bookworm-slim"},
	"docker_images":    {"a list of image references", "docker_images: [postgres:16, busybox]"},
	"agent":            {"an agent's name, or a mapping with name, version and args", "agent: claude"},
	"agent.name":       {"an agent's name, a string", "agent: {name: claude}"},
	"agent.version":    {"a version", "agent: {name: claude, version: 2.1.3}"},
	"agent.args":       {"a list of strings", "agent: {name: claude, args: [--model, opus]}"},
}

// got names what a node holds, for a type error.
func got(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing"
	case "!!bool":
		return "true/false"
	case "!!int", "!!float":
		return "a number"
	case "!!str":
		return "a string"
	}
	return Printable(n.ShortTag(), 20)
}

// later lists keys moat users may have that moatc does not support yet: naming them beats a
// confusing "unknown key".
var later = map[string]bool{
	"secrets": true, "services": true, "hooks": true,
}

// parser reads one file's nodes; every error names the file, the line and the key.
type parser struct{ path string }

func (p *parser) errAt(n *yaml.Node, key, format string, a ...any) error {
	return &Error{Path: p.path, Line: n.Line, Key: Printable(key, 80), Msg: fmt.Sprintf(format, a...)}
}

func (p *parser) typeErr(n *yaml.Node, key string, w want) error {
	return p.errAt(n, key, "must be %s (got %s), like: %s", w.what, got(n), w.like)
}

// is says n is a scalar with one of tags (a quoted "1" is !!str, 1 is !!int).
func is(n *yaml.Node, tags ...string) bool {
	return n.Kind == yaml.ScalarNode && slices.Contains(tags, n.ShortTag())
}

func (p *parser) str(n *yaml.Node, key string) (string, error) {
	if !is(n, "!!str") {
		return "", p.typeErr(n, key, wants[key])
	}
	return n.Value, nil
}

// oneOf reads a string that must be one of values.
func (p *parser) oneOf(n *yaml.Node, key, explain string, values ...string) (string, error) {
	s, err := p.str(n, key)
	if err == nil && !slices.Contains(values, s) {
		err = p.errAt(n, key, "%q is not %s", Printable(s, 80), explain)
	}
	return s, err
}

// list reads a list of scalars (numbers too, as in `ports: [8080:80]`) with their lines.
func (p *parser) list(n *yaml.Node, key string) ([]Item, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, p.typeErr(n, key, wants[key])
	}
	out := []Item{}
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode || c.ShortTag() == "!!null" {
			return nil, p.errAt(c, key, "list items must be strings (got %s), like: %s", got(c), wants[key].like)
		}
		out = append(out, Item{Text: c.Value, Line: c.Line})
	}
	return out, nil
}

func (p *parser) strings(n *yaml.Node, key string) ([]string, error) {
	items, err := p.list(n, key)
	var out []string
	for _, it := range items {
		out = append(out, it.Text)
	}
	return out, err
}

// mapping calls fn for each key of the mapping n, refusing a key written twice and one not
// in known (any key when known is nil). prefix is "" for the file itself, else the mapping's key.
func (p *parser) mapping(n *yaml.Node, prefix string, known []string, fn func(k, v *yaml.Node, key string) error) error {
	if n.Kind != yaml.MappingNode {
		return p.typeErr(n, prefix, wants[prefix])
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if prefix != "" {
			key = prefix + "." + k.Value
		}
		switch {
		case k.Kind != yaml.ScalarNode:
			return p.errAt(k, prefix, "a key must be a plain name (got %s)", got(k))
		case seen[k.Value]:
			return p.errAt(k, key, "appears twice")
		case prefix == "" && later[key]:
			return p.errAt(k, key, "is not supported by this version of moatc yet; remove it to run")
		case known != nil && !slices.Contains(known, k.Value):
			return p.errAt(k, key, "unknown key (known: %s)", strings.Join(known, ", "))
		}
		seen[k.Value] = true
		if err := fn(k, v, key); err != nil {
			return err
		}
	}
	return nil
}

func known() []string {
	k := []string{"name", "image", "command", "env", "mounts", "interactive", "sandbox", "container", "ports", "network", "dependencies", "base_image", "docker_images", "grants", "agent"}
	slices.Sort(k)
	return k
}

// Parse parses the bytes of a config file found at path.
func Parse(path string, data []byte) (*File, error) {
	sum := sha256.Sum256(data)
	f := &File{Path: path, Sum: hex.EncodeToString(sum[:])}
	root, err := document(path, data)
	if err != nil || root == nil {
		return f, err
	}
	if root.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Line, Msg: "the file must be a mapping of keys, e.g. `image: debian:bookworm-slim`"}
	}
	p := &parser{path: path}
	err = p.mapping(root, "", known(), func(k, v *yaml.Node, key string) error {
		if err := p.key(f, key, v); err != nil {
			return err
		}
		f.classify(k, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := f.checkDockerImages(); err != nil {
		return nil, err
	}
	return f, nil
}

// checkDockerImages refuses docker_images without docker:dind: only a dind engine starts
// with them (a docker:host run's namespace keeps its own images), and silently dropping
// them would leave the run without the images it was written for.
func (f *File) checkDockerImages() error {
	if len(f.DockerImages) == 0 {
		return nil
	}
	for _, d := range f.Dependencies {
		if strings.TrimSpace(d.Text) == "docker:dind" {
			return nil
		}
	}
	return &Error{Path: f.Path, Line: f.DockerImages[0].Line, Key: "docker_images",
		Msg: "needs docker:dind in dependencies (only a docker:dind engine starts with these images): add `dependencies: [docker:dind]`, or remove docker_images"}
}

// document parses data into its root node, nil for an empty file.
func document(path string, data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, syntaxError(path, err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// key reads one top-level key into f.
func (p *parser) key(f *File, key string, v *yaml.Node) error {
	var err error
	switch key {
	case "name":
		f.Name, err = p.str(v, key)
	case "image":
		f.Image, err = p.str(v, key)
	case "base_image":
		f.BaseImage, err = p.str(v, key)
	case "command":
		if is(v, "!!str") {
			f.Command = []string{"/bin/sh", "-c", v.Value}
		} else if v.Kind == yaml.SequenceNode {
			f.Command, err = p.strings(v, key)
		} else {
			err = p.typeErr(v, key, wants[key])
		}
	case "env":
		f.Env, err = p.env(v)
	case "mounts":
		f.Mounts, err = p.list(v, key)
	case "ports":
		f.Ports, err = p.list(v, key)
	case "dependencies":
		f.Dependencies, err = p.list(v, key)
	case "docker_images":
		f.DockerImages, err = p.images(v, key)
	case "interactive":
		f.Interactive, err = p.boolean(v, key)
	case "sandbox":
		f.Sandbox, err = p.oneOf(v, key, "a sandbox: write gvisor (the default) or none", "gvisor", "none")
	case "container":
		err = p.container(f, v)
	case "network":
		err = p.network(f, v)
	case "agent":
		f.Agent, err = p.agent(v)
	case "grants":
		f.Grants, err = p.grants(v)
	}
	return err
}

func (p *parser) boolean(n *yaml.Node, key string) (*bool, error) {
	var b bool
	if !is(n, "!!bool") || n.Decode(&b) != nil {
		return nil, p.typeErr(n, key, wants[key])
	}
	return &b, nil
}

func (p *parser) env(n *yaml.Node) (map[string]string, error) {
	env := map[string]string{}
	err := p.mapping(n, "env", nil, func(k, v *yaml.Node, key string) error {
		if !is(k, "!!str") {
			return p.errAt(k, "env", "a variable's name must be a string (got %s), like: %s", got(k), wants["env"].like)
		}
		if !is(v, "!!str", "!!int", "!!float", "!!bool") {
			return p.typeErr(v, key, wants["env."])
		}
		env[k.Value] = v.Value
		return nil
	})
	return env, err
}

func (p *parser) grants(n *yaml.Node) ([]Item, error) {
	gs, err := p.list(n, "grants")
	for _, it := range gs {
		if err == nil && !grantName.MatchString(it.Text) {
			err = p.errAt(&yaml.Node{Line: it.Line}, "grants", "%q is not a grant name: write names stored with `moatc grant`, e.g. [github, anthropic]", Printable(it.Text, 80))
		}
	}
	return gs, err
}

func (p *parser) container(f *File, n *yaml.Node) error {
	return p.mapping(n, "container", []string{"memory", "cpus", "pids"}, func(_, v *yaml.Node, key string) error {
		bad := func(format string) error { return p.errAt(v, key, format, Printable(v.Value, 80)) }
		if !is(v, map[string][]string{"container.memory": {"!!str", "!!int"}, "container.cpus": {"!!int", "!!float"}, "container.pids": {"!!int"}}[key]...) {
			return p.typeErr(v, key, wants[key])
		}
		var err error
		switch key {
		case "container.memory":
			if f.Memory, err = ParseMemory(v.Value); err != nil {
				return bad("%q is not a size: write e.g. 512m or 2g")
			}
		case "container.cpus":
			if f.CPUs, err = strconv.ParseFloat(v.Value, 64); err != nil || !(f.CPUs > 0) {
				return bad("%q is not a number of CPUs: write e.g. 1.5")
			}
		case "container.pids":
			if f.Pids, err = strconv.ParseInt(v.Value, 10, 64); err != nil || f.Pids < 1 {
				return bad("%q is not a number of processes: write e.g. 512")
			}
		}
		return nil
	})
}

func (p *parser) network(f *File, n *yaml.Node) error {
	mode := func(v *yaml.Node, key string) (err error) {
		f.Network, err = p.oneOf(v, key, "a network mode: write default (a private network with egress) or none (loopback only)", "default", "none")
		return err
	}
	if n.Kind == yaml.ScalarNode {
		return mode(n, "network")
	}
	return p.mapping(n, "network", []string{"mode", "host", "policy", "allow"}, func(_, v *yaml.Node, key string) (err error) {
		switch key {
		case "network.mode":
			return mode(v, key)
		case "network.host":
			f.HostPorts, err = p.list(v, key)
		case "network.policy":
			if f.NetPolicy, err = p.str(v, key); err == nil {
				if _, perr := policy.ParseMode(f.NetPolicy); perr != nil {
					return p.errAt(v, key, "%v", perr)
				}
			}
		case "network.allow":
			if f.Allow, err = p.list(v, key); err != nil {
				return err
			}
			for _, it := range f.Allow {
				if _, perr := policy.ParsePattern(it.Text); perr != nil {
					return p.errAt(&yaml.Node{Line: it.Line}, key, "%v", perr)
				}
			}
		}
		return err
	})
}

func (p *parser) agent(n *yaml.Node) (*Agent, error) {
	a := &Agent{Line: n.Line}
	var err error
	if is(n, "!!str") {
		a.Name, err = p.str(n, "agent")
		return a, err
	}
	err = p.mapping(n, "agent", []string{"name", "version", "args"}, func(_, v *yaml.Node, key string) (err error) {
		switch key {
		case "agent.name":
			a.Name, err = p.str(v, key)
		case "agent.version":
			// 2.1 and 2 are versions too; the text is kept as written.
			if !is(v, "!!str", "!!int", "!!float") {
				return p.typeErr(v, key, wants[key])
			}
			a.Version = v.Value
		case "agent.args":
			a.Args, err = p.strings(v, key)
		}
		return err
	})
	if err == nil && a.Name == "" {
		err = p.errAt(n, "agent", "the mapping needs name, like: %s", wants["agent.name"].like)
	}
	return a, err
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

// images reads a list of image references, each checked.
func (p *parser) images(n *yaml.Node, key string) ([]Item, error) {
	items, err := p.list(n, key)
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		if _, err := reference.ParseNormalizedNamed(it.Text); err != nil {
			return nil, p.errAt(n.Content[i], key, "%q is not an image reference (%v), like: %s", it.Text, err, wants[key].like)
		}
	}
	return items, nil
}
