package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/run"
)

func buildCommand() *cli.Command {
	return &cli.Command{
		Name:      "build",
		Usage:     "build a workspace's dependency image without running it",
		ArgsUsage: "[PATH]",
		Description: `Reads dependencies: (and base_image:) from PATH/moatc.yaml and builds the image with
BuildKit on moatc's containerd. The image is tagged moatc/run:<hash of the list, the base and
moatc's generator>, so an unchanged list is never built twice. --dry-run prints the plan and
the Dockerfile instead. The full build log is kept in ~/.moatc/builds/.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "dry-run", Usage: "print what would be built and the Dockerfile"},
			&cli.BoolFlag{Name: "rebuild", Usage: "build even if the image exists"},
			&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress"},
			&cli.StringFlag{Name: "image", Usage: "base `IMAGE` when moatc.yaml sets no base_image"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			ws := "."
			if c.NArg() > 1 {
				return usageError{fmt.Errorf("build takes one workspace PATH")}
			}
			if c.NArg() == 1 {
				ws = c.Args().First()
			}
			ws, _ = filepath.Abs(ws)
			if fi, err := os.Stat(ws); err != nil || !fi.IsDir() {
				return fmt.Errorf("workspace %s does not exist or is not a directory", ws)
			}
			file, err := loadTrusted(c, ws)
			if err != nil {
				return err
			}
			if len(file.Dependencies) == 0 {
				return fmt.Errorf("%s declares no dependencies: add e.g.\n  dependencies: [git, jq, node@22]\nto %s", ws, pick(file.Path, filepath.Join(ws, "moatc.yaml")))
			}
			d := depsRequest(c, ws, file)
			plan, base, tag, err := run.Plan(*d)
			if err != nil {
				return err
			}
			if c.Bool("dry-run") && c.Bool("json") {
				return printJSON(buildResult{Image: tag, Base: base, Items: planItems(plan), Dockerfile: string(plan.Dockerfile(base)), DryRun: true})
			}
			if c.Bool("dry-run") {
				fmt.Printf("# image %s from %s\n", tag, base)
				for _, it := range plan.Items {
					fmt.Printf("# %-28s %-12s %s\n", it.Name(), it.Version, it.Source())
				}
				os.Stdout.Write(plan.Dockerfile(base))
				return nil
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			name, _, err := e.mgr.BuildImage(ctx, *d)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(buildResult{Image: name, Base: base, Items: planItems(plan)})
			}
			fmt.Println(name)
			return nil
		},
	}
}

// buildResult is what build made (or, with --dry-run, would make), for --json.
type buildResult struct {
	Image      string     `json:"image"`
	Base       string     `json:"base"`
	Items      []planItem `json:"dependencies"`
	Dockerfile string     `json:"dockerfile,omitempty"`
	DryRun     bool       `json:"dry_run,omitempty"`
}

type planItem struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
	Source  string `json:"source"`
}

func planItems(p *deps.Plan) []planItem {
	items := []planItem{}
	for _, it := range p.Items {
		items = append(items, planItem{Name: it.Name(), Version: it.Version, Source: it.Source()})
	}
	return items
}

func depsCommand() *cli.Command {
	return &cli.Command{
		Name:  "deps",
		Usage: "the dependencies moatc knows",
		Subcommands: []*cli.Command{
			{
				Name:  "list",
				Usage: "list known dependencies",
				Flags: []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					all := deps.List()
					if c.Bool("json") {
						return printJSON(all)
					}
					tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tKIND\tVERSIONS\tDESCRIPTION")
					for _, i := range all {
						v := strings.Join(i.VersionNames(), ",")
						if i.Default != "" {
							v += " (default " + i.Default + ")"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.Name, i.Kind, v, i.Description)
					}
					tw.Flush()
					fmt.Println("\nAlso: npm:PKG[@V], go:MODULE[@V], apt:PKG, pip:PKG[@V] (needs a reachable index), docker:host|docker:dind (not yet).")
					return nil
				},
			},
			{
				Name:      "info",
				Usage:     "show one dependency",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{jsonFlag},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usageError{fmt.Errorf("deps info needs one NAME (see `moatc deps list`)")}
					}
					i, err := deps.Lookup(c.Args().First())
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(i)
					}
					tw, row := fieldTable()
					row("Name", i.Name)
					row("Kind", string(i.Kind))
					row("Description", i.Description)
					row("Source", i.Source)
					row("Versions", strings.Join(i.VersionNames(), ", "))
					row("Default", i.Default)
					row("Requires", strings.Join(i.Requires, ", "))
					row("Bundle", strings.Join(i.Bundle, ", "))
					row("Debian packages", strings.Join(i.Apt, ", "))
					row("npm package", i.NPM)
					row("Go package", i.Go)
					return tw.Flush()
				},
			},
		},
	}
}
