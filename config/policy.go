package config

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// DefaultPids is the pids limit of a run unless the person sets another: enough for any
// build, small enough that a fork bomb stops long before the host's own limit.
const DefaultPids = 4096

// Setting is one policy setting of a config file, where it is and what it says.
type Setting struct {
	Key   string `json:"key"`
	Line  int    `json:"line"`
	Value string `json:"value"` // the value as written, one line, control characters escaped
}

func (s Setting) String() string { return s.Key + ": " + s.Value }

// classify records key k if its value widens what the workload reaches. Workload keys (name,
// image, command, env, dependencies other than docker:host, interactive, base_image, limits
// that only lower what the run gets) shape what runs inside the sandbox and need nothing.
// Policy keys need the person's trust. Values that only restate the default or narrow it
// (sandbox: gvisor, network: none) are not policy: they cannot widen anything.
func (f *File) classify(k, v *yaml.Node) {
	add := func(n *yaml.Node, key string) {
		f.Policy = append(f.Policy, Setting{Key: key, Line: n.Line, Value: render(n)})
	}
	switch k.Value {
	case "sandbox":
		if f.Sandbox == "none" {
			add(v, "sandbox")
		}
	case "mounts":
		if len(f.Mounts) > 0 {
			add(v, "mounts")
		}
	case "ports":
		if len(f.Ports) > 0 {
			add(v, "ports")
		}
	case "network":
		if v.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(v.Content); j += 2 {
				if v.Content[j].Value == "host" && len(f.HostPorts) > 0 {
					add(v.Content[j+1], "network.host")
				}
			}
		}
	case "agent":
		// An agent comes with its grant (its API key) and its hosts.
		if f.Agent != nil {
			add(v, "agent")
		}
	case "grants":
		// A grant hands the workload's requests a credential of the person's.
		if len(f.Grants) > 0 {
			add(v, "grants")
		}
	case "container":
		for j := 0; j+1 < len(v.Content); j += 2 {
			if v.Content[j].Value == "pids" && f.Pids > DefaultPids {
				add(v.Content[j+1], "container.pids")
			}
		}
	case "docker_images":
		// Images of moatc's store copied into the run's engine: the store holds the person's
		// images (private ones pulled with their credentials, other workspaces' dependency
		// images), which the workload could then read or `docker save`.
		if len(f.DockerImages) > 0 {
			add(v, "docker_images")
		}
	case "dependencies":
		// docker:host hands the workload an engine socket shared with the person's other
		// docker:host runs, whose images it can then read and replace.
		for _, c := range v.Content {
			if strings.HasPrefix(strings.TrimSpace(c.Value), "docker:host") {
				add(c, "dependencies")
			}
		}
	}
}

// render writes a YAML value on one line, as the person should read it before trusting it.
func render(n *yaml.Node) string {
	var b strings.Builder
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		switch n.Kind {
		case yaml.SequenceNode:
			b.WriteString("[")
			for i, c := range n.Content {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(c)
			}
			b.WriteString("]")
		case yaml.MappingNode:
			b.WriteString("{")
			for i := 0; i+1 < len(n.Content); i += 2 {
				if i > 0 {
					b.WriteString(", ")
				}
				walk(n.Content[i])
				b.WriteString(": ")
				walk(n.Content[i+1])
			}
			b.WriteString("}")
		case yaml.AliasNode:
			if n.Alias != nil {
				walk(n.Alias)
			}
		default:
			b.WriteString(n.Value)
		}
	}
	walk(n)
	return Printable(b.String(), 300)
}

// Printable makes text from a workspace file safe to print on the person's terminal: control
// characters (escape sequences could rewrite what the person reads) and other non-printing
// runes are escaped, and the text is cut at max runes.
func Printable(s string, max int) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n >= max {
			b.WriteString("…")
			break
		}
		n++
		if unicode.IsPrint(r) {
			b.WriteRune(r)
			continue
		}
		q := strconv.QuoteRune(r)
		b.WriteString(q[1 : len(q)-1])
	}
	return b.String()
}

// PolicyKeys names the policy keys a file sets, each once, in order.
func (f *File) PolicyKeys() []string {
	var keys []string
	seen := map[string]bool{}
	for _, s := range f.Policy {
		if !seen[s.Key] {
			seen[s.Key] = true
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// Where is a setting's place, file:line.
func (f *File) Where(s Setting) string { return fmt.Sprintf("%s:%d", f.Path, s.Line) }
