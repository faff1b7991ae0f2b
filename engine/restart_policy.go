package engine

import (
	"fmt"
	"os"
	"time"

	"github.com/moby/moby/api/types/container"
)

// Restart policies, as Docker applies them while its daemon runs: a container that ends is
// started again after a delay (100 ms, doubled at each restart in a row, at most a minute; a
// run of 10 s or more starts the count again), unless it was stopped or killed through the
// API, or is being removed. "unless-stopped" is "always" here: an engine that starts again
// (an adopting supervisor) does not restart what ended while none ran.

const (
	restartFirst = 100 * time.Millisecond
	restartMax   = time.Minute
	restartReset = 10 * time.Second
)

// checkRestartPolicy refuses what Docker refuses of a create's restart policy.
func checkRestartPolicy(hc *container.HostConfig) error {
	if err := container.ValidateRestartPolicy(hc.RestartPolicy); err != nil {
		return invalid("%v", err)
	}
	if hc.AutoRemove && !hc.RestartPolicy.IsNone() {
		return invalid("conflicting options: cannot specify both --restart and --rm")
	}
	return nil
}

// wantsRestart reports whether a container with policy p that ended with code, restarted
// count times, is started again (not counting a stop or kill through the API).
func wantsRestart(p container.RestartPolicy, code, count int) bool {
	switch p.Name {
	case container.RestartPolicyAlways, container.RestartPolicyUnlessStopped:
		return true
	case container.RestartPolicyOnFailure:
		return code != 0 && (p.MaximumRetryCount == 0 || count < p.MaximumRetryCount)
	}
	return false
}

// restartDelay is the wait before the next restart of a run of streak restarts in a row.
func restartDelay(streak int) time.Duration {
	d := restartFirst
	for range streak {
		d *= 2
		if d >= restartMax {
			return restartMax
		}
	}
	return d
}

// setManuallyStopped records a stop, kill or start asked through the API: a stopped
// container is not restarted by its policy until it is started again.
func (e *Engine) setManuallyStopped(c *ctr, stopped bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c.rec.State.ManuallyStopped != stopped {
		c.rec.State.ManuallyStopped = stopped
		e.save(c)
	}
}

// maybeRestart starts c again after its policy's delay when its end calls for it. Call it
// once c's end is recorded; ran is how long its last run lasted.
func (e *Engine) maybeRestart(c *ctr, code int, ran time.Duration) {
	e.mu.Lock()
	hc := c.rec.HostConfig
	if hc == nil || c.removing || c.removed || c.rec.State.ManuallyStopped || e.bg.Err() != nil ||
		!wantsRestart(hc.RestartPolicy, code, c.rec.State.RestartCount) {
		e.mu.Unlock()
		return
	}
	if ran >= restartReset {
		c.restartStreak = 0
	}
	delay := restartDelay(c.restartStreak)
	c.restartStreak++
	e.mu.Unlock()
	// A worker (maybeRestart runs in the watcher, itself one): Close waits for it, and a
	// restart never starts a task in a namespace being destroyed.
	e.workers.Add(1)
	go func() {
		defer e.workers.Done()
		select {
		case <-time.After(delay):
		case <-e.bg.Done():
			return
		}
		e.mu.Lock()
		skip := c.removing || c.removed || c.rec.State.ManuallyStopped || c.running() || c.starting || e.bg.Err() != nil
		if !skip {
			c.rec.State.RestartCount++
			e.save(c)
		}
		e.mu.Unlock()
		if skip {
			return
		}
		if err := e.startContainer(e.bg, c); err != nil && err != errNotModified {
			fmt.Fprintf(os.Stderr, "moatc engine: warning: restarting %s (--restart %s): %v\n", c.rec.Name, hc.RestartPolicy.Name, err)
		}
	}()
}
