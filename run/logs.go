package run

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"time"

	"github.com/moatc/moatc/state"
)

// LogOptions select what Logs prints.
type LogOptions struct {
	Follow     bool // keep printing until the run ends
	Tail       int  // only the last N lines; 0 is all
	Timestamps bool
}

// Logs prints a run's recorded output: stdout lines to out, stderr lines to errw, so the two
// stay separate.
func (m *Manager) Logs(ctx context.Context, ref string, o LogOptions, out, errw io.Writer) error {
	r, err := m.Store.Find(ref)
	if err != nil {
		return err
	}
	path := m.Store.LogPath(r.ID)
	var f *os.File
	for {
		f, err = os.Open(path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		// A detached run that has not started yet has no log: wait for one while it may come.
		if cur, gerr := m.Store.Get(r.ID); !o.Follow || gerr != nil || !cur.Active() {
			return nil
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
	defer f.Close()
	print := func(l Line) {
		w := out
		if l.Stream == "stderr" {
			w = errw
		}
		if o.Timestamps {
			io.WriteString(w, l.Time.Format(time.RFC3339Nano)+" ")
		}
		io.WriteString(w, l.Text)
		if !l.Partial {
			io.WriteString(w, "\n")
		}
	}
	rd := bufio.NewReaderSize(f, 64<<10)
	if o.Tail > 0 {
		ring := make([]Line, 0, o.Tail)
		for {
			l, err := readLine(rd)
			if err != nil {
				break
			}
			if len(ring) == o.Tail {
				ring = ring[1:]
			}
			ring = append(ring, l)
		}
		for _, l := range ring {
			print(l)
		}
	}
	for {
		l, err := readLine(rd)
		if err == nil {
			print(l)
			continue
		}
		if !o.Follow {
			return nil
		}
		cur, gerr := m.Store.Get(r.ID)
		if gerr != nil {
			return gerr
		}
		if !cur.Active() {
			// The record is final only after the log was flushed: drain what is left.
			for {
				l, err := readLine(rd)
				if err != nil {
					return nil
				}
				print(l)
			}
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// readLine reads one complete JSON line. A line caught half-written is completed by waiting
// briefly for the rest; the recorder always ends lines, so this is short.
func readLine(rd *bufio.Reader) (Line, error) {
	var l Line
	b, err := rd.ReadBytes('\n')
	for tries := 0; err == io.EOF && len(b) > 0 && tries < 500; tries++ {
		time.Sleep(10 * time.Millisecond)
		var more []byte
		more, err = rd.ReadBytes('\n')
		b = append(b, more...)
	}
	if err != nil {
		return l, err
	}
	return l, json.Unmarshal(b, &l)
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// Get resolves a run reference.
func (m *Manager) Get(ref string) (*state.Run, error) { return m.Store.Find(ref) }
