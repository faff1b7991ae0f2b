// Package config reads a workspace's moatc.yaml (agent.yaml and moat.yaml are accepted too, for
// people coming from moat). Every error names the file, the line and the key.
package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
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
	// DockerImages are images of moatc's store a docker:dind run's engine starts with.
	DockerImages []Item
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
