package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/proxy"
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
	r, err := e.mgr.Store.Find(ref)
	if err != nil {
		return err
	}
	path := filepath.Join(e.mgr.Store.Dir(r.ID), "network.jsonl")
	f, err := os.Open(path)
	if os.IsNotExist(err) && !c.Bool("follow") {
		if r.Spec.Network == "none" {
			return fmt.Errorf("run %s has no network, so no proxy and no requests", ref)
		}
		f = nil // no request yet
	} else if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("reading the trace of run %s: %w", ref, err)
	}
	out := traceTable(c.Bool("json"))
	defer out.flush()
	var rd *bufio.Reader
	if f != nil {
		defer f.Close()
		rd = bufio.NewReader(f)
	}
	for {
		if rd == nil {
			if f, err = os.Open(path); err == nil {
				defer f.Close()
				rd = bufio.NewReader(f)
			}
		}
		for rd != nil {
			line, err := rd.ReadBytes('\n')
			if len(line) > 0 && line[len(line)-1] == '\n' {
				out.line(line)
			} else if len(line) > 0 {
				// A line still being written: read it whole next time.
				f.Seek(-int64(len(line)), io.SeekCurrent)
				rd.Reset(f)
			}
			if err != nil {
				break
			}
		}
		if !c.Bool("follow") {
			return nil
		}
		cur, err := e.mgr.Store.Get(r.ID)
		if err != nil {
			return err
		}
		if !cur.Active() {
			if rd == nil {
				return nil
			}
			// One last read: what the proxy wrote before the run ended.
			for {
				line, err := rd.ReadBytes('\n')
				if len(line) > 0 {
					out.line(line)
				}
				if err != nil {
					return nil
				}
			}
		}
		out.flush()
		time.Sleep(200 * time.Millisecond)
	}
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
