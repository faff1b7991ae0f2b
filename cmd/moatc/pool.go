package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/pool"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/run"
	"github.com/moatc/moatc/state"
)

func poolCommand() *cli.Command {
	return &cli.Command{
		Name:  "pool",
		Usage: "warm starts: gVisor sandboxes booted and networks made ahead of the runs that take them",
		Description: `A run whose class matches a ready member of the pool takes it: under gVisor it starts
its container in a sandbox that is already booted, in a network already made; under runc it
gets a network already made. Each member serves one run and is destroyed with it; nothing
passes from one run to the next. After a run takes one, a detached 'moatc pool fill' makes
another. Runs that match no member (other limits, --network none, docker modes, rootless
moatc, --cold) start cold, as always.

Sizes and limits per runtime are set in moatc's config.yaml:
  pool:
    gvisor: 2                  # or {size: 2, memory: 1g, cpus: 2, pids: 4096}
    runc: 2                    # networks only; 0 turns a runtime's pool off

Examples:
  moatc pool status            # members, their state and memory
  moatc pool fill              # make the pool whole now (waits for a fill that runs)
  moatc pool drain             # remove every idle member`,
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "list the pool's members: class, state, age, memory",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					defer e.mgr.Close()
					return poolStatus(c, e)
				},
			},
			{
				Name:  "fill",
				Usage: "make members until the pool has its size",
				Flags: []cli.Flag{
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "print nothing but errors"},
					&cli.BoolFlag{Name: "json", Usage: "print the members made as JSON"},
					&cli.IntFlag{Name: "after", Hidden: true, Usage: "wait (at most 3 s) for process `PID` to end first"},
				},
				Action: poolFillAction,
			},
			{
				Name:  "drain",
				Usage: "remove every member no run holds (a fill that runs is stopped first)",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print the removed members' ids as JSON"}},
				Action: func(c *cli.Context) error {
					e, err := setup(c)
					if err != nil {
						return err
					}
					defer e.mgr.Close()
					if e.mgr.Pool == nil {
						return fmt.Errorf("there is no warm pool here: %s", poolOff(c))
					}
					gone, err := e.mgr.Pool.Drain(c.Context)
					if gone == nil {
						gone = []string{}
					}
					if c.Bool("json") {
						if perr := printJSON(gone); perr != nil {
							return perr
						}
					} else {
						fmt.Printf("removed %d pool member(s)\n", len(gone))
					}
					return err
				},
			},
		},
	}
}

// warmPool is the home's pool as config.yaml sets it; nil when moatc is rootless (its
// networks live in rootlesskit's namespace, and are made per run).
func warmPool(c *cli.Context, home, prefix, addr, ns string, cfg *config.Settings, mgr *run.Manager) *pool.Pool {
	if rootless.Enabled() {
		return nil
	}
	want := cfg.WarmPool
	if want == nil {
		want = config.DefaultWarmPool()
	}
	if v := os.Getenv(warmPoolEnv); v == "0" || v == "off" {
		want = nil // every run cold, whatever config.yaml says
	}
	var sizes []pool.Size
	for _, rt := range []string{"gvisor", "runc"} {
		pc := want[rt]
		cl := pool.Class{Runtime: rt}
		if rt == "gvisor" {
			cl.Memory, cl.CPUs, cl.Pids = pc.Memory, pc.CPUs, pc.Pids
			if cl.Pids == 0 {
				cl.Pids = run.DefaultPids()
			}
		}
		if pc.Size > 0 {
			sizes = append(sizes, pool.Size{Class: cl, N: pc.Size})
		}
	}
	return &pool.Pool{
		Dir: filepath.Join(home, "pool"), Net: mgr.Net, Client: mgr.Client, Pause: pauseBinary(prefix), Sizes: sizes,
		Runtime: func(cl pool.Class) ctrd.Runtime {
			return mgr.Runtime(state.Spec{Runtime: state.Runtime(cl.Runtime), Platform: cl.Platform})
		},
		FillCommand: func() []string {
			return []string{self(), "--home", home, "--prefix", prefix, "--address", addr, "--namespace", ns, "pool", "fill", "--quiet"}
		},
	}
}

// warmPoolEnv, set to 0 or off, turns the warm pool off for the moatc commands that see it
// (a CI job's, a test suite's), whatever config.yaml says.
const warmPoolEnv = "MOATC_WARM_POOL"

// pauseBinary is moatc-pause next to this moatc, else in the prefix.
func pauseBinary(prefix string) string {
	p := filepath.Join(filepath.Dir(self()), "moatc-pause")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return filepath.Join(prefix, "bin", "moatc-pause")
}

func poolOff(c *cli.Context) string {
	if rootless.Enabled() {
		return "a rootless moatc starts every run cold"
	}
	if v := os.Getenv(warmPoolEnv); v == "0" || v == "off" {
		return warmPoolEnv + "=" + v + " turns it off"
	}
	return "set sizes under pool: in " + filepath.Join(c.String("home"), "config.yaml")
}

func poolFillAction(c *cli.Context) error {
	if pid := c.Int("after"); pid > 0 {
		// The run that took a member starts first: its start is not slowed by this fill.
		if p, err := state.ProcessOf(pid); err == nil {
			for deadline := time.Now().Add(3 * time.Second); p.Alive() && time.Now().Before(deadline); {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	ctx, cancel := signalContext(c)
	defer cancel()
	e, err := setup(c)
	if err != nil {
		return err
	}
	defer e.mgr.Close()
	p := e.mgr.Pool
	if p == nil || p.Want() == 0 {
		if !c.Bool("quiet") {
			fmt.Printf("the pool keeps nothing: %s\n", poolOff(c))
		}
		return nil
	}
	start := time.Now()
	list := []*pool.Member{}
	made, err := p.Fill(ctx, func(m *pool.Member) {
		list = append(list, m)
		if !c.Bool("quiet") && !c.Bool("json") {
			fmt.Printf("made %s (%s)%s\n", m.ID, m.Class, memoryNote(m))
		}
	})
	if c.Bool("json") {
		if perr := printJSON(list); perr != nil {
			return perr
		}
	}
	if err != nil {
		// Runs start cold meanwhile: the pool is an optimisation, never a precondition.
		return fmt.Errorf("%w; runs start cold until the pool can be filled (`moatc pool status` shows it)", err)
	}
	if !c.Bool("quiet") && !c.Bool("json") {
		fmt.Printf("the pool is full: %d made in %s\n", made, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func memoryNote(m *pool.Member) string {
	if m.MemoryKB == 0 {
		return ""
	}
	return fmt.Sprintf(", %.1f MB idle", float64(m.MemoryKB)/1024)
}

type poolMemberStatus struct {
	*pool.Member
	Class  string `json:"class_name"`
	Age    string `json:"age"`
	Health string `json:"health"`
}

func poolStatus(c *cli.Context, e *env) error {
	p := e.mgr.Pool
	out := struct {
		Enabled bool               `json:"enabled"`
		Sizes   map[string]int     `json:"sizes"`
		Members []poolMemberStatus `json:"members"`
		// MemoryKB is what the idle members cost in all (PSS).
		MemoryKB int64 `json:"memory_kb"`
		// FillError is why the last fill failed; runs start cold meanwhile.
		FillError string `json:"fill_error,omitempty"`
	}{Sizes: map[string]int{}, Members: []poolMemberStatus{}}
	if p != nil {
		out.Enabled = p.Want() > 0
		out.FillError = p.FillError()
		for _, s := range p.Sizes {
			out.Sizes[s.Class.String()] = s.N
		}
		ms, err := p.Members()
		if err != nil {
			return err
		}
		for _, m := range ms {
			st := poolMemberStatus{Member: m, Class: m.Class.String(), Age: time.Since(m.Created).Round(time.Second).String(), Health: "ok"}
			if why := p.Broken(c.Context, m); m.State == pool.Ready && why != "" {
				st.Health = why
			}
			if m.State != pool.Ready && !m.Owner.Alive() {
				st.Health = "its process is gone (the next fill or clean removes it)"
			}
			if m.State == pool.Ready {
				out.MemoryKB += m.MemoryKB
			}
			out.Members = append(out.Members, st)
		}
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	if !out.Enabled {
		fmt.Printf("the warm pool is off: %s\n", poolOff(c))
	}
	for cl, n := range out.Sizes {
		fmt.Printf("keeps %d of %s\n", n, cl)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCLASS\tSTATE\tAGE\tMEMORY\tHEALTH")
	for _, m := range out.Members {
		mem := "-"
		if m.MemoryKB > 0 {
			mem = strconv.FormatFloat(float64(m.MemoryKB)/1024, 'f', 1, 64) + " MB"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Class, m.State, m.Age, mem, m.Health)
	}
	tw.Flush()
	if out.FillError != "" {
		fmt.Printf("the last fill failed: %s\n", out.FillError)
	}
	fmt.Printf("idle memory: %.1f MB (PSS of the ready members' shims, sandboxes and gofers)\n", float64(out.MemoryKB)/1024)
	return nil
}
