package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/rootless"
)

// enterRootless makes a non-root moatc work in its rootless containerd's namespaces: outside
// them, it starts the kit if needed and runs this command again inside (Enter does not
// return); inside, it only tells the daemon which kit it runs in.
//
// With --address, the containerd is the user's own rootless one, in nerdctl's layout: its
// rootlesskit's state is containerd-rootless next to the socket's directory. It returns the kit
// (the networks use its port driver).
func enterRootless(c *cli.Context, d *ctrd.Daemon, addr string) (*rootless.Kit, error) {
	kit := &rootless.Kit{StateDir: filepath.Join(filepath.Dir(d.Dir), "rootless"), Self: self()}
	if addr != "" {
		kit.StateDir = filepath.Join(filepath.Dir(filepath.Dir(addr)), "containerd-rootless")
	} else {
		d.Kit = kit
	}
	if rootless.InUserNamespace() {
		return kit, nil
	}
	if addr != "" {
		if _, err := os.Stat(addr); err != nil {
			return nil, &ctrd.NotAnsweringError{Address: addr, Err: err}
		}
		if unix.Access(addr, unix.W_OK) != nil {
			return nil, fmt.Errorf("the containerd at %s is not this user's (no write access to its socket: a rootful containerd belongs to root): as a non-root user moatc runs its own rootless containerd; drop --address (and MOATC_CONTAINERD_ADDRESS, address: in config.yaml) to use it", addr)
		}
		if _, err := kit.ChildPid(); err != nil {
			return nil, fmt.Errorf("using the rootless containerd at %s: moatc needs the namespaces of the rootlesskit that runs it, and %s has no child_pid (%v): drop --address to use moatc's own rootless containerd", addr, kit.StateDir, err)
		}
		return nil, kit.Enter()
	}
	if !d.Answering() {
		// Looking at or stopping a stack that is down must not start it.
		switch c.Command.HelpName {
		case "moatc system status", "moatc system stop":
			return kit, nil
		case "moatc doctor":
			// Doctor shows what is missing rather than failing to start the kit.
			if rootless.PreflightHome(filepath.Dir(d.Dir)) != nil {
				return kit, nil
			}
		}
		if err := d.Start(c.Context); err != nil {
			return nil, err
		}
	}
	return nil, kit.Enter()
}

// warnings is where a command's warnings go before setup: nowhere when this moatc is about to
// run again inside the rootless namespaces, which prints them then (a dry run is never re-run).
func warnings(c *cli.Context) io.Writer {
	if rootless.Enabled() && !rootless.InUserNamespace() && !c.Bool("dry-run") {
		return io.Discard
	}
	return os.Stderr
}
