package main

import (
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/run"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:      "top",
		Usage:     "list the processes of a running run",
		ArgsUsage: "RUN",
		Flags:     []cli.Flag{jsonFlag},
		Action: func(c *cli.Context) error {
			ref, err := oneRun(c)
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			t, err := e.mgr.Top(c.Context, ref)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(t)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
			fmt.Fprintln(w, "PID\tPPID\tUID\tTIME\tCMD")
			for _, p := range t.Processes {
				fmt.Fprintf(w, "%d\t%d\t%d\t%s\t%s\n", p.PID, p.PPID, p.UID, p.Time, p.Cmd)
			}
			return w.Flush()
		},
	}
}

func statsCommand() *cli.Command {
	return &cli.Command{
		Name:      "stats",
		Usage:     "show the CPU, memory and process count of running runs (all of them without RUN)",
		ArgsUsage: "[RUN...]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "stream", Usage: "print again every interval until interrupted"},
			&cli.BoolFlag{Name: "no-stream", Usage: "print once (the default; as in Docker)"},
			&cli.DurationFlag{Name: "interval", Value: run.DefaultStatsInterval, Usage: "measure CPU use over `DURATION`"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error {
			if c.Duration("interval") < 100*time.Millisecond {
				return usageError{fmt.Errorf("--interval must be at least 100ms")}
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			for {
				st, err := e.mgr.Stats(ctx, c.Args().Slice(), c.Duration("interval"))
				if err != nil {
					if ctx.Err() != nil && c.Bool("stream") {
						return nil // interrupted: the end of a stream
					}
					return err
				}
				if err := printStats(st, c.Bool("json")); err != nil {
					return err
				}
				if !c.Bool("stream") || c.Bool("no-stream") {
					return nil
				}
			}
		},
	}
}

func printStats(st []run.Stats, asJSON bool) error {
	if asJSON {
		return printJSON(st)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "RUN\tNAME\tCPU %\tMEM USAGE / LIMIT\tMEM %\tPIDS")
	for _, s := range st {
		fmt.Fprintf(w, "%s\t%s\t%.2f%%\t%s / %s\t%.2f%%\t%d\n", s.Run, s.Name, s.CPUPercent,
			byteSize(s.MemoryUsage), byteSize(s.MemoryLimit), s.MemoryPercent, s.Pids)
	}
	return w.Flush()
}

// byteSize prints bytes in binary units, as Docker's stats does.
func byteSize(b uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(b), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return strconv.FormatUint(b, 10) + "B"
	}
	return fmt.Sprintf("%.2f%s", f, units[i])
}
