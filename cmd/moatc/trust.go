package main

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/trust"
)

func trustCommand() *cli.Command {
	return &cli.Command{
		Name:      "trust",
		Usage:     "allow a workspace's moatc.yaml to widen what its runs reach",
		ArgsUsage: "[PATH]",
		Description: `The workload can write its workspace's moatc.yaml (or agent.yaml, moat.yaml), so settings
that widen what a run reaches count only once you have read and trusted that exact file:
sandbox: none, mounts, ports, network.host, container.pids above the default, docker:host.
'moatc trust' shows them and records the file's sha256 in moatc's home; a run refuses the
file again as soon as one byte of it changes. PATH is the workspace (default .) or its
config file. Flags on the command line need no trust: they are yours.

  moatc trust              # trust ./moatc.yaml as it is now
  moatc trust --dry-run    # only show its policy keys
  moatc trust --list       # every trusted file, and whether it changed since
  moatc untrust            # forget ./moatc.yaml`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "list", Aliases: []string{"l"}, Usage: "list the trusted files instead"},
			&cli.BoolFlag{Name: "dry-run", Usage: "show the policy keys without trusting"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			store := trust.Open(c.String("home"))
			if c.Bool("list") {
				if c.NArg() > 0 {
					return usageError{fmt.Errorf("trust --list takes no PATH")}
				}
				return listTrusted(c, store)
			}
			f, err := configAt(c)
			if err != nil {
				return err
			}
			if c.Bool("dry-run") {
				if c.Bool("json") {
					return printJSON(map[string]any{"path": f.Path, "sha256": f.Sum, "policy": nonNil(f.Policy)})
				}
				printPolicy(f)
				return nil
			}
			e, err := store.Trust(f)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(e)
			}
			printPolicy(f)
			fmt.Printf("trusted %s (sha256 %s) in %s; it must be trusted again after any change\n", f.Path, f.Sum[:12], store.Path())
			return nil
		},
	}
}

func untrustCommand() *cli.Command {
	return &cli.Command{
		Name:      "untrust",
		Usage:     "forget that a workspace's moatc.yaml was trusted",
		ArgsUsage: "[PATH]",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			path, err := configPath(c)
			if err != nil {
				return err
			}
			found, err := trust.Open(c.String("home")).Untrust(path)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(map[string]any{"path": path, "was_trusted": found})
			}
			if found {
				fmt.Printf("%s is no longer trusted\n", path)
			} else {
				fmt.Printf("%s was not trusted; nothing to do\n", path)
			}
			return nil
		},
	}
}

func nonNil(s []config.Setting) []config.Setting {
	if s == nil {
		return []config.Setting{}
	}
	return s
}

func printPolicy(f *config.File) {
	if len(f.Policy) == 0 {
		fmt.Printf("%s sets no policy keys: its runs need no trust\n", f.Path)
		return
	}
	fmt.Printf("%s sets these policy keys:\n", f.Path)
	for _, s := range f.Policy {
		fmt.Printf("  line %d: %s\n", s.Line, s)
	}
}

// configPath turns PATH (a workspace or its config file; default .) into the config file's
// absolute path, which need not exist.
func configPath(c *cli.Context) (string, error) {
	if c.NArg() > 1 {
		return "", usageError{fmt.Errorf("%s takes one PATH, the workspace or its config file", c.Command.Name)}
	}
	p, err := filepath.Abs(pick(c.Args().First(), "."))
	if err != nil {
		return "", err
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		if found := config.Find(p); found != "" {
			return found, nil
		}
		return filepath.Join(p, config.Names[0]), nil
	}
	return p, nil
}

// configAt reads the config file PATH names, the way a run reads it.
func configAt(c *cli.Context) (*config.File, error) {
	p, err := configPath(c)
	if err != nil {
		return nil, err
	}
	dir := filepath.Dir(p)
	found := config.Find(dir)
	if found == "" {
		return nil, fmt.Errorf("%s has no config file (%v): nothing to trust", dir, config.Names)
	}
	if found != p {
		return nil, fmt.Errorf("%s is not the file runs in %s read: they read %s; trust that one", p, dir, found)
	}
	return config.Load(dir)
}

func listTrusted(c *cli.Context, store *trust.Store) error {
	entries, err := store.List()
	if err != nil {
		return err
	}
	type row struct {
		trust.Entry
		Status string `json:"status"` // trusted, changed or missing
	}
	rows := make([]row, 0, len(entries))
	for _, e := range entries {
		st := "trusted"
		f, err := config.Load(filepath.Dir(e.Path))
		switch {
		case err != nil || f.Path != e.Path:
			st = "missing"
		case f.Sum != e.Sum:
			st = "changed"
		}
		rows = append(rows, row{e, st})
	}
	if c.Bool("json") {
		return printJSON(rows)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PATH\tSHA256\tTRUSTED\tSTATUS\tKEYS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s ago\t%s\t%v\n", r.Path, r.Sum[:12], ago(r.Trusted), r.Status, r.Keys)
	}
	return tw.Flush()
}
