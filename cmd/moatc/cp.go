package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

func cpCommand() *cli.Command {
	return &cli.Command{
		Name:      "cp",
		Usage:     "copy files between a running run's container and the host",
		ArgsUsage: "RUN:SRC DEST|-  or  SRC|- RUN:DEST",
		Description: `Copies as docker cp does: into DEST when it is a directory, as DEST otherwise; SRC/. copies
a directory's content. "-" is a tar stream on stdin or stdout. Paths in the container resolve inside
it (.. and symlinks never reach the host); the image needs tar.`,
		Flags: []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 {
				return usageError{fmt.Errorf("cp needs SRC and DEST, one of them RUN:PATH (see `moatc list`)")}
			}
			src, dst := c.Args().Get(0), c.Args().Get(1)
			srcRun, srcPath, srcIn := splitRunPath(src)
			dstRun, dstPath, dstIn := splitRunPath(dst)
			if srcIn == dstIn {
				return usageError{fmt.Errorf("cp copies between a run and the host: exactly one of SRC and DEST is RUN:PATH")}
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			ref := dstRun
			if srcIn {
				ref = srcRun
				err = e.mgr.CopyOut(ctx, srcRun, srcPath, dst, os.Stdout)
			} else {
				err = e.mgr.CopyIn(ctx, dstRun, src, dstPath, os.Stdin)
			}
			if err != nil {
				return err
			}
			if c.Bool("json") && !(srcIn && dst == "-") {
				return printJSON(map[string]string{"run": ref, "source": src, "destination": dst})
			}
			return nil
		},
	}
}

// splitRunPath reads RUN:PATH. A host path with a colon is written with a slash before it
// (./a:b), as in Docker.
func splitRunPath(arg string) (ref, p string, ok bool) {
	if arg == "-" || strings.HasPrefix(arg, "/") || strings.HasPrefix(arg, ".") {
		return "", arg, false
	}
	ref, p, ok = strings.Cut(arg, ":")
	if !ok || ref == "" || strings.Contains(ref, "/") {
		return "", arg, false
	}
	return ref, p, true
}
