package main

import (
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/doctor"
	"github.com/moatc/moatc/state"
)

func doctorCommand() *cli.Command {
	return &cli.Command{
		Name:  "doctor",
		Usage: "check each part of the stack and say how to fix what fails",
		Description: `Checks containerd (installed, reachable, version), runc, runsc and the gVisor shim (versions,
and a probe container under each runtime), the CNI plugins, buildkitd, and kernel features
(overlayfs, cgroups, user namespaces, /dev/kvm). Run as a user who is not root, it first checks
what rootless mode needs (user namespaces, /etc/subuid and /etc/subgid ranges, newuidmap and
newgidmap, rootlesskit, slirp4netns, /dev/net/tun, a writable moatc home), each with the command
that fixes it. Exits 1 when a required check fails.`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			e, err := setup(c)
			if err != nil {
				if os.Geteuid() != 0 {
					// A home that cannot be made is one of the rootless checks: show them all.
					if perr := printChecks(c, doctor.Rootless(c.String("home"))); perr != nil {
						return perr
					}
				}
				return err
			}
			checks := doctor.Run(c.Context, doctor.Options{
				Prefix: e.prefix, Conn: e.mgr.Conn, Home: e.home,
				Runtimes: []ctrd.Runtime{e.mgr.Runtime(state.Spec{Runtime: "gvisor"}), ctrd.Runc{Prefix: e.prefix}},
			})
			if err := printChecks(c, checks); err != nil {
				return err
			}
			if doctor.Failed(checks) {
				return exitStatus(1)
			}
			return nil
		},
	}
}

func printChecks(c *cli.Context, checks []doctor.Check) error {
	if c.Bool("json") {
		return printJSON(checks)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	for _, ch := range checks {
		mark := "OK"
		if !ch.OK {
			mark = "FAIL"
			if ch.Optional {
				mark = "--"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, ch.Name, ch.Detail)
		if ch.Fix != "" {
			fmt.Fprintf(tw, "\t\tfix: %s\n", ch.Fix)
		}
	}
	return tw.Flush()
}
