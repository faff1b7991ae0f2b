package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/run"
)

// plan is `moatc run --dry-run`: the run as it would be made.
type plan struct {
	Workspace  string              `json:"workspace"`
	Image      string              `json:"image"`
	Built      *builtImage         `json:"built,omitempty"`
	Command    []string            `json:"command"`
	Runtime    string              `json:"runtime"`
	User       string              `json:"user"`
	Env        []string            `json:"env"` // names only: values may be secrets of the person's
	Mounts     []string            `json:"mounts"`
	Network    string              `json:"network"`
	Policy     string              `json:"policy"`
	Allowed    []string            `json:"allowed"`
	Grants     map[string][]string `json:"grants"`
	HostPorts  []string            `json:"host_ports"`
	Published  []string            `json:"published"`
	Proxy      *proxyPlan          `json:"proxy,omitempty"`
	Config     string              `json:"config,omitempty"`
	Trust      string              `json:"trust"`
	PolicyKeys []string            `json:"policy_keys"`
	Workdir    string              `json:"workdir"`
	Hostname   string              `json:"hostname,omitempty"` // empty: the run's name, chosen at start
	Init       bool                `json:"init"`
	ReadOnly   bool                `json:"read_only"`
	Remove     bool                `json:"remove"`
	Tmpfs      []string            `json:"tmpfs"`
	Labels     map[string]string   `json:"labels"`
	StopTime   int                 `json:"stop_timeout"`
}

type builtImage struct {
	Base string `json:"base"`
	Tag  string `json:"tag"`
}

type proxyPlan struct {
	Env        []string `json:"env"`
	CA         string   `json:"ca"`
	Bundle     string   `json:"bundle"`
	UpstreamCA string   `json:"upstream_ca"`
}

func dryRun(c *cli.Context, req run.Request) error {
	s := req.Spec
	wsMode := "rw"
	if s.WorkspaceRO {
		wsMode = "ro"
	}
	p := plan{Workspace: req.Workspace, Image: s.Image, Command: s.Command, Runtime: string(s.Runtime), User: s.User,
		Network: string(s.Network), Policy: s.Policy, Allowed: []string{}, Grants: map[string][]string{},
		HostPorts: append([]string{}, s.HostPorts...), Published: append([]string{}, s.Publish...),
		Env: []string{}, Mounts: []string{req.Workspace + " -> /workspace (" + wsMode + ")"}, Trust: "no config file", PolicyKeys: []string{},
		Workdir: pick(s.Workdir, "/workspace"), Hostname: pick(s.Hostname, req.Name), Init: s.Init, ReadOnly: s.ReadOnly, Remove: s.Remove,
		Tmpfs: []string{}, Labels: map[string]string{}, StopTime: run.DefaultStopTimeout}
	for _, t := range s.Tmpfs {
		p.Tmpfs = append(p.Tmpfs, t.Path+" ("+strings.Join(t.Options, ",")+")")
	}
	for k, v := range s.Labels {
		p.Labels[k] = v
	}
	if s.StopTimeout != nil {
		p.StopTime = *s.StopTimeout
	}
	if s.Platform != "" {
		p.Runtime += " (" + s.Platform + ")"
	}
	if req.Deps != nil {
		_, base, tag, err := run.Plan(*req.Deps)
		if err != nil {
			return err
		}
		p.Image, p.Built = tag, &builtImage{Base: base, Tag: tag}
	}
	for _, kv := range s.Env {
		k, _, _ := strings.Cut(kv, "=")
		p.Env = append(p.Env, k)
	}
	for _, m := range s.Mounts {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		p.Mounts = append(p.Mounts, fmt.Sprintf("%s -> %s (%s)", m.Host, m.Container, mode))
	}
	if s.Network != "none" {
		mgr := &run.Manager{Dir: c.String("home")}
		eg, err := mgr.ResolveEgress(s)
		if err != nil {
			return err
		}
		if eg.Policy.Strict {
			seen := map[string]bool{}
			for _, a := range eg.Policy.Allow {
				if !seen[a.String()] {
					p.Allowed, seen[a.String()] = append(p.Allowed, a.String()), true
				}
			}
		}
		p.Grants = eg.GrantedHosts()
		p.Proxy = &proxyPlan{Env: run.ProxyEnvNames(), CA: "moatc's CA (" + filepath.Join(c.String("home"), "proxy", "ca.pem") + ", public certificate only) -> " + run.CAPath,
			Bundle: "the image's roots plus moatc's CA -> " + run.BundlePath, UpstreamCA: "the system's roots"}
		if s.UpstreamCA != "" {
			p.Proxy.UpstreamCA += " and " + s.UpstreamCA
		}
	}
	file, err := config.Load(req.Workspace)
	if err != nil {
		return err
	}
	if file.Path != "" {
		p.Config = file.Path
		p.PolicyKeys = append(p.PolicyKeys, file.PolicyKeys()...)
		p.Trust = "no policy keys (nothing to trust)"
		if len(p.PolicyKeys) > 0 {
			p.Trust = "trusted" // buildRequest refused it otherwise
		}
	}
	if c.Bool("json") {
		return printJSON(p)
	}
	return printPlan(p)
}

// printPlan prints a dry run's plan as a table.
func printPlan(p plan) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	row := func(k string, v ...string) {
		if len(v) == 0 {
			v = []string{"-"}
		}
		fmt.Fprintf(tw, "%s\t%s\n", k, v[0])
		for _, x := range v[1:] {
			fmt.Fprintf(tw, "\t%s\n", x)
		}
	}
	fmt.Println("moatc run --dry-run: nothing was started")
	row("workspace:", p.Workspace)
	if p.Built != nil {
		row("image:", fmt.Sprintf("%s (built from the dependencies on %s)", p.Image, p.Built.Base))
	} else {
		row("image:", p.Image)
	}
	row("command:", config.Printable(strings.Join(p.Command, " "), 200))
	row("runtime:", p.Runtime)
	row("user:", p.User)
	printDockerSettings(row, p)
	row("env:", strings.Join(p.Env, " "))
	row("mounts:", p.Mounts...)
	row("network:", p.Network)
	if p.Proxy != nil {
		row("policy:", p.Policy)
		if p.Policy == "strict" {
			row("allowed:", p.Allowed...)
		}
		var gs []string
		for _, g := range sortedKeys(p.Grants) {
			gs = append(gs, g+": "+strings.Join(p.Grants[g], ", "))
		}
		row("grants:", gs...)
		row("proxy:", "moatc's proxy on the run's gateway, given as "+strings.Join(p.Proxy.Env[:4], ", "),
			"CA: "+p.Proxy.CA, "bundle: "+p.Proxy.Bundle, "upstream trust: "+p.Proxy.UpstreamCA)
	}
	row("host ports:", p.HostPorts...)
	row("published:", p.Published...)
	if p.Config != "" {
		row("config:", p.Config)
	}
	row("trust:", p.Trust)
	return tw.Flush()
}

func onOff(on bool, yes, no string) string {
	if on {
		return yes
	}
	return no
}

// printDockerSettings prints the settings of the flags named as Docker's.
func printDockerSettings(row func(string, ...string), p plan) {
	row("workdir:", p.Workdir)
	row("hostname:", pick(p.Hostname, "the run's name"))
	row("init:", onOff(p.Init, "tini as PID 1", "no (the command is PID 1)"))
	row("rootfs:", onOff(p.ReadOnly, "read-only", "writable"))
	row("tmpfs:", p.Tmpfs...)
	var ls []string
	for _, k := range sortedKeys(p.Labels) {
		ls = append(ls, k+"="+p.Labels[k])
	}
	row("labels:", ls...)
	row("stop grace:", fmt.Sprintf("%ds", p.StopTime))
	row("at the end:", onOff(p.Remove, "its record and log are removed (--rm)", "its record and log are kept"))
}
