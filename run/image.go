package run

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moatc/moatc/builder"
	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/deps"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/snapshot"
)

// DefaultBase is the base image of dependency images when moatc.yaml names none.
const DefaultBase = "debian:bookworm-slim"

// Deps asks for an image made from declared dependencies.
type Deps struct {
	Entries  []deps.Entry // `dependencies:` with their file and line
	Base     string       // base image; DefaultBase when empty
	Rebuild  bool         // build even if the image exists
	Progress io.Writer    // build progress; nil for none
	Mode     string       // builder.ModeAuto, ModeTTY, ModePlain or ModeQuiet
	Scope    string       // the build's cache scope: CacheScope of the workspace
}

// CacheScope is a workspace's build cache scope: its builds share caches with each other and
// with no other workspace's builds.
func CacheScope(workspace string) string {
	sum := sha256.Sum256([]byte(filepath.Clean(workspace)))
	return "ws" + hex.EncodeToString(sum[:])[:12]
}

// Plan resolves the dependency list: what would be built, as what, and from which recipe.
// It touches nothing.
func Plan(d Deps) (plan *deps.Plan, base, tag string, err error) {
	parsed, err := deps.Parse(d.Entries)
	if err != nil {
		return nil, "", "", err
	}
	plan, err = deps.Resolve(parsed)
	if err != nil {
		return nil, "", "", err
	}
	plan.Scope = d.Scope
	base = d.Base
	if base == "" {
		base = DefaultBase
	}
	if base, err = ctrd.Normalize(base); err != nil {
		return nil, "", "", err
	}
	return plan, base, plan.Tag(base), nil
}

// BuildImage makes sure the image of a dependency list exists, building it with BuildKit on
// containerd's own store when the list (or the base, or moatc's generator) changed, and
// returns its name and the log of its build. An unchanged list costs one image lookup: no
// BuildKit call at all.
func (m *Manager) BuildImage(ctx context.Context, d Deps) (name, buildLog string, err error) {
	plan, base, tag, err := Plan(d)
	if err != nil {
		return "", "", err
	}
	buildLog = m.BuildLog(tag)
	name, err = m.buildImage(ctx, d, plan, base, tag)
	return name, buildLog, err
}

func (m *Manager) buildImage(ctx context.Context, d Deps, plan *deps.Plan, base, tag string) (string, error) {
	c, err := m.Client(ctx)
	if err != nil {
		return "", err
	}
	name, err := builder.ImageName(tag)
	if err != nil {
		return "", err
	}
	if !d.Rebuild {
		if _, err := c.GetImage(ctx, name); err == nil {
			return name, nil
		}
	}
	if err := m.ensureBase(ctx, c, base, d.Progress); err != nil {
		return "", err
	}
	bd := m.BuildDaemon()
	// Live from before its network is made: clean removes that network only when no build is.
	end, err := bd.Hold()
	if err != nil {
		return "", err
	}
	defer end()
	if err := m.prepareBuildSandbox(ctx); err != nil {
		return "", err
	}
	logPath := m.BuildLog(tag)
	os.MkdirAll(filepath.Dir(logPath), 0o700)
	return builder.Build(ctx, bd, builder.Request{
		Dockerfile: plan.Dockerfile(base), Tag: tag, Progress: d.Progress, Mode: d.Mode,
		LogPath: logPath, Rebuild: d.Rebuild,
	})
}

// BuildLog is where the log of the build of a dependency image is kept.
func (m *Manager) BuildLog(tag string) string {
	return filepath.Join(m.Dir, "builds", strings.TrimPrefix(tag, "moatc/run:")+".log")
}

// BuildDaemon is the managed buildkitd, on the same containerd and namespace as runs.
func (m *Manager) BuildDaemon() *builder.Daemon {
	addr := m.Conn.Address
	if addr == "" {
		addr = m.Conn.Daemon.Address()
	}
	ns := m.Conn.Namespace
	if ns == "" {
		ns = ctrd.DefaultNamespace
	}
	return &builder.Daemon{Dir: m.buildDir(), Prefix: m.Prefix, ContainerdAddress: addr, Namespace: ns, Snapshotter: snapshot.Default(),
		Sandbox: &builder.Sandbox{
			Runtime: ctrd.GVisor{}.Shim(), RuntimeConfig: m.buildRuntime().ConfigPath(),
			CNIConfig: m.Net.ConfPath(m.BuildNetwork()), CNIBinDir: m.buildPluginDir(),
		}}
}

func (m *Manager) buildDir() string { return filepath.Join(m.Dir, "buildkit") }

// BuildNetwork is the id of the network builds' RUN steps use; one per moatc home.
func (m *Manager) BuildNetwork() string {
	sum := sha256.Sum256([]byte(filepath.Clean(m.Dir)))
	return "bld" + hex.EncodeToString(sum[:])[:9]
}

func (m *Manager) buildRuntime() ctrd.GVisor {
	return ctrd.GVisor{Prefix: m.Prefix, Dir: filepath.Join(m.Dir, "runsc"), ForBuild: true, Rootless: rootless.Enabled()}
}

func (m *Manager) buildPluginDir() string {
	d, _ := m.Net.PluginDir() // prepareBuildSandbox reports a missing plugin
	return d
}

// prepareBuildSandbox makes what builds run in, before buildkitd starts: gVisor (the same
// check as a run's) and the build network, with the rules of a run's.
func (m *Manager) prepareBuildSandbox(ctx context.Context) error {
	rt := m.buildRuntime()
	if err := rt.Check(); err != nil {
		return err
	}
	if _, err := rt.ConfigFile(); err != nil {
		return err
	}
	if _, err := m.Net.PluginDir(); err != nil {
		return err
	}
	_, err := m.Net.SetupShared(ctx, m.BuildNetwork())
	return err
}

// StopBuilder stops buildkitd and removes the build network.
func (m *Manager) StopBuilder(ctx context.Context, grace time.Duration) error {
	if err := m.BuildDaemon().Stop(ctx, grace); err != nil {
		return err
	}
	return m.Net.Teardown(ctx, m.BuildNetwork())
}

// SweepLeases removes what killed moatc processes left held in containerd: BuildKit's
// temporary leases once no build is live (builder.Daemon.Sweep: the idle buildkitd is stopped
// for it) and the leases moatc's own imports, pulls, unpacks and container creations made
// (ctrd.Client.AbandonedLeases), with what only they held. It returns both lists; dry removes
// nothing. containerd is not started for it.
func (m *Manager) SweepLeases(ctx context.Context, dry bool) (build, own []string, err error) {
	if !m.daemonReachable() {
		return nil, nil, nil
	}
	if build, err = m.BuildDaemon().Sweep(ctx, dry); err != nil {
		return nil, nil, fmt.Errorf("sweeping BuildKit's leases: %w", err)
	}
	c, err := m.Client(ctx)
	if err != nil {
		return build, nil, err
	}
	if own, err = c.AbandonedLeases(ctx); err != nil || dry {
		return build, own, err
	}
	for _, id := range own {
		if err := c.RemoveLease(ctx, id); err != nil {
			return build, own, err
		}
	}
	return build, own, nil
}

// ensureBase finds the base image in the store, or pulls it; an offline host gets an error
// that says how to import it.
func (m *Manager) ensureBase(ctx context.Context, c *ctrd.Client, base string, progress io.Writer) error {
	if _, err := c.Image(ctx, base, snapshot.Default()); err == nil {
		return nil
	} else if !errors.As(err, new(*ctrd.ImageNotFoundError)) {
		return err
	}
	if progress != nil {
		fmt.Fprintf(progress, "base image %s is not in the store: pulling it\n", base)
	}
	if _, err := c.Pull(ctx, base, snapshot.Default(), nil); err != nil {
		return fmt.Errorf("the base image %s is not in moatc's image store and could not be pulled (%v): import it with `moatc image import FILE` (or `make base-images` for debian:bookworm-slim), or set base_image in moatc.yaml to an image you have", base, err)
	}
	return nil
}

// HoldBuilder marks a build live and makes its sandbox ready (gVisor, the build network): what
// the Docker Engine API's builds call before they solve on BuildDaemon. end unmarks it.
func (m *Manager) HoldBuilder(ctx context.Context) (end func(), err error) {
	end, err = m.BuildDaemon().Hold()
	if err != nil {
		return nil, err
	}
	if err := m.prepareBuildSandbox(ctx); err != nil {
		end()
		return nil, err
	}
	return end, nil
}
