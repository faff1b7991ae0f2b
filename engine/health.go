package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	dockerspec "github.com/moby/docker-image-spec/specs-go/v1"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"

	"github.com/moatc/moatc/run"
)

// Health checks, run as Docker runs them: the test is exec'd in the running container every
// Interval (StartInterval during StartPeriod), killed after Timeout; a success makes it
// healthy, Retries failures in a row unhealthy, and failures during StartPeriod do not
// count. The last 5 results are kept, each with at most 4 KiB of output. compose's
// `depends_on: condition: service_healthy` and testcontainers' health wait read them.

const (
	healthInterval      = 30 * time.Second
	healthTimeout       = 30 * time.Second
	healthStartInterval = 5 * time.Second
	healthRetries       = 3
	healthLogMax        = 5
	healthOutputMax     = 4096
)

// healthEnabled reports whether h asks for a health check.
func healthEnabled(h *container.HealthConfig) bool {
	return h != nil && len(h.Test) > 0 && h.Test[0] != "NONE"
}

// newHealth is the health state a run of a container with config cfg starts with.
func newHealth(cfg *container.Config) *container.Health {
	if cfg == nil || !healthEnabled(cfg.Healthcheck) {
		return nil
	}
	return &container.Health{Status: container.Starting, Log: []*container.HealthcheckResult{}}
}

// checkHealthcheck refuses a test Docker would refuse.
func checkHealthcheck(h *container.HealthConfig) error {
	if !healthEnabled(h) {
		return nil
	}
	if _, err := healthArgs(h.Test); err != nil {
		return err
	}
	for _, d := range []time.Duration{h.Interval, h.Timeout, h.StartPeriod, h.StartInterval} {
		if d != 0 && d < time.Millisecond {
			return invalid("health check durations must be at least 1ms (or 0 for the default)")
		}
	}
	if h.Retries < 0 {
		return invalid("--health-retries cannot be negative")
	}
	return nil
}

// healthArgs is the command of test ["CMD", args...] or ["CMD-SHELL", command].
func healthArgs(test []string) ([]string, error) {
	switch {
	case test[0] == "CMD" && len(test) > 1:
		return test[1:], nil
	case test[0] == "CMD-SHELL" && len(test) > 1:
		return []string{"/bin/sh", "-c", strings.Join(test[1:], " ")}, nil
	}
	return nil, invalid("invalid health check test %q: write [\"CMD\", ARGS...], [\"CMD-SHELL\", COMMAND] or [\"NONE\"]", test)
}

// mergeHealthcheck completes the request's health check from the image's, field by field,
// as Docker does.
func mergeHealthcheck(req, img *container.HealthConfig) *container.HealthConfig {
	if img == nil {
		return req
	}
	if req == nil {
		c := *img
		return &c
	}
	c := *req
	if len(c.Test) == 0 {
		c.Test = img.Test
	}
	if c.Interval == 0 {
		c.Interval = img.Interval
	}
	if c.Timeout == 0 {
		c.Timeout = img.Timeout
	}
	if c.StartPeriod == 0 {
		c.StartPeriod = img.StartPeriod
	}
	if c.StartInterval == 0 {
		c.StartInterval = img.StartInterval
	}
	if c.Retries == 0 {
		c.Retries = img.Retries
	}
	return &c
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// healthLoop runs the health checks of run seq of c (its task) until that run ends.
func (e *Engine) healthLoop(c *ctr, cc containerd.Container, task containerd.Task, seq int) {
	e.mu.Lock()
	h := *c.rec.Config.Healthcheck
	e.mu.Unlock()
	args, err := healthArgs(h.Test)
	if err != nil {
		return // refused at create
	}
	interval, timeout := orDefault(h.Interval, healthInterval), orDefault(h.Timeout, healthTimeout)
	startInterval := orDefault(h.StartInterval, healthStartInterval)
	retries := h.Retries
	if retries <= 0 {
		retries = healthRetries
	}
	began := time.Now()
	for {
		wait := interval
		if time.Since(began) < h.StartPeriod {
			wait = startInterval
		}
		select {
		case <-time.After(wait):
		case <-e.bg.Done():
			return
		}
		if !e.runOf(c, seq) {
			return
		}
		res := e.probe(cc, task, args, timeout)
		if !e.recordHealth(c, seq, res, time.Since(began) < h.StartPeriod, retries) {
			return
		}
	}
}

// runOf reports whether run seq of c still goes on.
func (e *Engine) runOf(c *ctr, seq int) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return c.starts == seq && c.running() && !c.removing && !c.removed
}

// probe runs one check: its exit code (-1 when it could not run or timed out) and output.
func (e *Engine) probe(cc containerd.Container, task containerd.Task, args []string, timeout time.Duration) *container.HealthcheckResult {
	res := &container.HealthcheckResult{Start: time.Now()}
	ctx, cancel := context.WithTimeout(e.bg, timeout)
	defer cancel()
	out := &cappedBuffer{max: healthOutputMax}
	code, err := e.execProcess(ctx, cc, task, nil, run.ExecOptions{Args: args}, nil, out, out)
	res.End = time.Now()
	switch {
	case ctx.Err() == context.DeadlineExceeded:
		res.ExitCode, res.Output = -1, fmt.Sprintf("Health check exceeded timeout (%v)", timeout)
	case err != nil:
		res.ExitCode, res.Output = -1, fmt.Sprintf("running the health check: %v", err)
	default:
		res.ExitCode, res.Output = code, out.String()
	}
	return res
}

// recordHealth adds res to run seq of c's health, changes its status and emits the event of
// a change. It reports false when that run has ended.
func (e *Engine) recordHealth(c *ctr, seq int, res *container.HealthcheckResult, starting bool, retries int) bool {
	e.mu.Lock()
	hs := c.rec.State.Health
	if c.starts != seq || !c.running() || hs == nil {
		e.mu.Unlock()
		return false
	}
	hs.Log = append(hs.Log, res)
	if len(hs.Log) > healthLogMax {
		hs.Log = hs.Log[len(hs.Log)-healthLogMax:]
	}
	before := hs.Status
	switch {
	case res.ExitCode == 0:
		hs.Status, hs.FailingStreak = container.Healthy, 0
	case starting:
		// Failures while the container starts do not count.
	default:
		hs.FailingStreak++
		if hs.FailingStreak >= retries {
			hs.Status = container.Unhealthy
		}
	}
	e.save(c)
	rec := c.rec
	e.mu.Unlock()
	if hs.Status != before {
		e.containerEvent(events.Action(string(events.ActionHealthStatus)+": "+string(hs.Status)), rec, nil)
	}
	return true
}

// cappedBuffer keeps the first max bytes written to it and drops the rest.
type cappedBuffer struct {
	bytes.Buffer
	max int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if room := b.max - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// imageHealthcheck is image img's HEALTHCHECK (Docker's config field), or nil.
func (e *Engine) imageHealthcheck(ctx context.Context, img containerd.Image) *container.HealthConfig {
	desc, err := img.Config(ctx)
	if err != nil {
		return nil
	}
	b, err := content.ReadBlob(ctx, img.ContentStore(), desc)
	if err != nil {
		return nil
	}
	var cfg dockerspec.DockerOCIImage
	if json.Unmarshal(b, &cfg) != nil || cfg.Config.Healthcheck == nil {
		return nil
	}
	h := cfg.Config.Healthcheck
	return &container.HealthConfig{Test: h.Test, Interval: h.Interval, Timeout: h.Timeout, StartPeriod: h.StartPeriod, StartInterval: h.StartInterval, Retries: h.Retries}
}
