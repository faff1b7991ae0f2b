package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/daemon"
)

// component is one part of the stack in `moatc version`.
type component struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Path    string `json:"path,omitempty"`
	Error   string `json:"error,omitempty"`
}

// daemonState is what `moatc version` says of containerd, without starting it.
type daemonState struct {
	Address string `json:"address"`
	Managed bool   `json:"managed"` // moatc's own containerd (not --address)
	Running bool   `json:"running"`
	Pid     int    `json:"pid,omitempty"`
	Version string `json:"version,omitempty"` // the server's, when it answers
}

type versionReport struct {
	Version    string      `json:"version"`
	Go         string      `json:"go"`
	Platform   string      `json:"platform"`
	Components []component `json:"components"`
	Containerd daemonState `json:"containerd"`
}

// stackBinaries are the executables moatc drives, as `make setup` installs them.
var stackBinaries = []string{"containerd", "runc", "runsc", "containerd-shim-runsc-v1", "buildkitd"}

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:  "version",
		Usage: "print moatc's version and each part of the stack's (containerd, runc, gVisor, its shim, BuildKit, CNI)",
		Description: `Says which binary of each part moatc would use (PREFIX/bin first, then PATH) and its
version, and whether containerd answers on its socket (it is not started: see 'moatc system').
'moatc --version' prints moatc's version alone.`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			home, prefix, addr := c.String("home"), c.String("prefix"), c.String("address")
			if addr == "" {
				if cfg, err := config.LoadSettings(filepath.Join(home, "config.yaml")); err == nil {
					addr = cfg.Address
				}
			}
			rep := stackVersions(c.Context, home, prefix, addr)
			if c.Bool("json") {
				return printJSON(rep)
			}
			return printVersions(rep)
		},
	}
}

// stackVersions gathers the report; a missing part is an entry with its error, not a failure.
func stackVersions(ctx context.Context, home, prefix, addr string) versionReport {
	rep := versionReport{Version: version, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	for _, b := range stackBinaries {
		c := component{Name: b}
		path, v, err := ctrd.BinaryVersion(prefix, b)
		if err != nil {
			c.Error = "not found in " + filepath.Join(prefix, "bin") + " or PATH: run `make setup`"
		}
		c.Path, c.Version = path, v
		rep.Components = append(rep.Components, c)
	}
	rep.Components = append(rep.Components, cniVersion(filepath.Join(prefix, "lib", "cni")))
	rep.Containerd = containerdState(ctx, home, prefix, addr)
	return rep
}

// cniVersion asks the bridge plugin, and dpkg when the plugin was built without a version
// (Debian's containernetworking-plugins: "version unknown").
func cniVersion(dir string) component {
	c := component{Name: "cni-plugins", Path: dir}
	bridge := filepath.Join(dir, "bridge")
	cmd := exec.Command(bridge)
	cmd.Env = []string{} // no CNI_COMMAND: the plugin prints its version
	out, err := cmd.CombinedOutput()
	if err != nil && len(out) == 0 {
		c.Error = fmt.Sprintf("running %s: %v: run `make setup`", bridge, err)
		return c
	}
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	_, c.Version, _ = strings.Cut(first, " version ")
	if c.Version == "" || c.Version == "unknown" {
		c.Version = "unknown"
		if real, err := filepath.EvalSymlinks(bridge); err == nil {
			if v := dpkgVersion(real); v != "" {
				c.Version = v + " (Debian package)"
			}
		}
	}
	return c
}

func dpkgVersion(path string) string {
	out, err := exec.Command("dpkg-query", "-S", path).Output()
	if err != nil {
		return ""
	}
	pkg, _, ok := strings.Cut(strings.TrimSpace(string(out)), ":")
	if !ok {
		return ""
	}
	v, err := exec.Command("dpkg-query", "-W", "-f", "${Version}", pkg).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(v))
}

// containerdState looks at the socket only: `moatc version` must not start the daemon.
func containerdState(ctx context.Context, home, prefix, addr string) daemonState {
	d := &ctrd.Daemon{Dir: filepath.Join(home, "containerd"), Prefix: prefix}
	st := daemonState{Address: addr}
	if addr == "" {
		st.Address, st.Managed = d.Address(), true
	}
	st.Running = daemon.Answering(st.Address)
	if !st.Running {
		return st
	}
	if pid, ok := d.Pid(); ok && st.Managed {
		st.Pid = pid
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if cl, err := ctrd.Connect(ctx, ctrd.Options{Address: st.Address}); err == nil {
		defer cl.Close()
		if v, err := cl.Version(ctx); err == nil {
			st.Version = v.Version
		}
	}
	return st
}

func printVersions(rep versionReport) error {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "moatc\t%s\t\n", rep.Version)
	fmt.Fprintf(tw, "go\t%s\t%s\n", rep.Go, rep.Platform)
	for _, c := range rep.Components {
		if c.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t%s\n", c.Name, c.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Name, c.Version, c.Path)
	}
	cd := rep.Containerd
	which := "containerd (--address)"
	if cd.Managed {
		which = "containerd (managed)"
	}
	state := "not running" // started by the first command that needs it
	if cd.Running {
		state = "running"
		if cd.Pid > 0 {
			state += fmt.Sprintf(", pid %d", cd.Pid)
		}
		if cd.Version != "" {
			state += ", server " + cd.Version
		}
	}
	fmt.Fprintf(tw, "%s\t%s\t%s\n", which, state, cd.Address)
	return tw.Flush()
}
