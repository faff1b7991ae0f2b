package main

import (
	"encoding/json"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/proxy"
	"github.com/moatc/moatc/run"
)

func traceCommand() *cli.Command {
	return &cli.Command{
		Name:      "trace",
		Usage:     "show the HTTP(S) requests a run made through its proxy",
		ArgsUsage: "RUN",
		Description: `Every request a run sends through its proxy is recorded in network.jsonl in the run's
directory: time, method, host, path (without the query), status, duration, bytes each way,
the grant whose credential was added and the policy decision (allowed, denied-policy,
denied-auth, denied-address, refused-plain-http, refused-mismatch, error). Credential values
and other secret headers are recorded as [redacted].

Examples:
  moatc trace agent            # a table
  moatc trace --json agent     # the raw JSON lines
  moatc trace -f agent         # follow until the run ends`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the recorded JSON lines as they are"},
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "keep printing new requests until the run ends"},
		},
		Action: traceAction,
	}
}

func traceAction(c *cli.Context) error {
	ref, err := oneRun(c)
	if err != nil {
		return err
	}
	e, err := setup(c)
	if err != nil {
		return err
	}
	defer e.mgr.Close()
	out := traceTable(c.Bool("json"))
	defer out.flush()
	ctx, cancel := signalContext(c)
	defer cancel()
	return e.mgr.Trace(ctx, ref, run.TraceOptions{Follow: c.Bool("follow"), Idle: out.flush}, out.line)
}

type tracePrinter struct {
	raw bool
	tw  *tabwriter.Writer
	hdr bool
}

func traceTable(raw bool) *tracePrinter {
	return &tracePrinter{raw: raw, tw: tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)}
}

func (p *tracePrinter) line(b []byte) {
	if p.raw {
		os.Stdout.Write(b)
		return
	}
	var e proxy.Entry
	if err := json.Unmarshal(b, &e); err != nil {
		return // a torn line after a crash: skipped
	}
	if !p.hdr {
		fmt.Fprintln(p.tw, "TIME\tMETHOD\tHOST\tPATH\tSTATUS\tDURATION\tSENT\tRECEIVED\tGRANT\tDECISION")
		p.hdr = true
	}
	host := e.Host
	if e.Port != 0 && e.Port != 443 && e.Port != 80 {
		host = fmt.Sprintf("%s:%d", e.Host, e.Port)
	}
	if e.Scheme == "http" {
		host = "http://" + host
	}
	status := "-"
	if e.Status != 0 {
		status = fmt.Sprint(e.Status)
	}
	fmt.Fprintf(p.tw, "%s\t%s\t%s\t%s\t%s\t%.1fms\t%d\t%d\t%s\t%s\n", e.Time.Local().Format("15:04:05.000"),
		config.Printable(e.Method, 16), config.Printable(host, 60), config.Printable(e.Path, 60), status,
		e.DurationMS, e.BytesOut, e.BytesIn, pick(e.Grant, "-"), e.Decision)
}

func (p *tracePrinter) flush() { p.tw.Flush() }
