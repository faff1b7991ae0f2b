package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/state"
)

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:  "events",
		Usage: "print runs' events (created, started, exited, removed) as they happen, until Ctrl-C",
		Description: `Every change in a run's life is appended to MOATC_HOME/events.jsonl (rotated to
events.1.jsonl at 4 MB), whichever moatc process made it. Without --since, only events from now
on are printed; --since replays the log first. With --until, moatc stops at that time (at once
when it is past).

Examples:
  moatc events --json                       # one JSON object a line
  moatc events --since 1h --until 0s        # the last hour, then exit
  moatc events --filter run=web --filter type=exited`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "since", Usage: "replay logged events from `TIME` (10m, 2006-01-02T15:04:05Z, a date or Unix seconds)"},
			&cli.StringFlag{Name: "until", Usage: "stop at `TIME` (same forms as --since)"},
			&cli.StringSliceFlag{Name: "filter", Aliases: []string{"f"}, Usage: "only events matching `KEY=VALUE`: run=NAME|ID, type=created|started|exited|removed (repeatable)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object a line"},
		},
		Action: func(c *cli.Context) error {
			o, err := eventOptions(c)
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			return e.mgr.Store.Events(ctx, o, func(ev state.Event) error {
				if c.Bool("json") {
					b, err := json.Marshal(ev)
					if err != nil {
						return err
					}
					fmt.Println(string(b))
					return nil
				}
				fmt.Println(ev)
				return nil
			})
		},
	}
}

func eventOptions(c *cli.Context) (state.EventOptions, error) {
	var o state.EventOptions
	var err error
	now := time.Now()
	if s := c.String("since"); s != "" {
		if o.Since, err = state.ParseEventTime(s, now); err != nil {
			return o, usageError{fmt.Errorf("--since: %w", err)}
		}
	}
	if s := c.String("until"); s != "" {
		if o.Until, err = state.ParseEventTime(s, now); err != nil {
			return o, usageError{fmt.Errorf("--until: %w", err)}
		}
	}
	if o.Filter, err = state.ParseEventFilters(c.StringSlice("filter")); err != nil {
		return o, usageError{err}
	}
	return o, nil
}
