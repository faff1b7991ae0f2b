package engine

import (
	"bufio"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/api/types/system"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/ctrd"
)

func init() {
	route("GET /_ping", ping)
	route("HEAD /_ping", ping)
	route("GET /version", version)
	route("GET /info", info)
}

// ping is HEAD and GET /_ping: "OK", with the headers clients negotiate from (Api-Version,
// Ostype, Docker-Experimental: see newMux) and Builder-Version 1: builds are the classic
// POST /build, not BuildKit's /grpc and /session (clients with buildx would use those).
func ping(_ *Engine, w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Builder-Version", "1")
	h.Set("Swarm", "inactive")
	h.Set("Cache-Control", "no-cache, no-store, must-revalidate")
	h.Set("Pragma", "no-cache")
	h.Set("Content-Type", "text/plain; charset=utf-8")
	if r.Method == http.MethodHead {
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return nil
	}
	w.WriteHeader(http.StatusOK)
	w.Write([]byte("OK"))
	return nil
}

// version is GET /version. CLI 29 shows the Engine component's details, not the top-level
// fields (kept for older clients).
func version(e *Engine, w http.ResponseWriter, r *http.Request) error {
	kernel := kernelVersion()
	built := buildTime()
	engineDetails := map[string]string{
		"ApiVersion": MaxAPIVersion, "MinAPIVersion": MinAPIVersion, "GitCommit": gitCommit(), "GoVersion": runtime.Version(),
		"Os": runtime.GOOS, "Arch": runtime.GOARCH, "BuildTime": built, "KernelVersion": kernel, "Experimental": "false",
	}
	components := []system.ComponentVersion{{Name: "Engine", Version: e.cfg.Version, Details: engineDetails}}
	if v, err := e.cfg.Client.Version(r.Context()); err == nil {
		components = append(components, system.ComponentVersion{Name: "containerd", Version: v.Version, Details: map[string]string{"GitCommit": v.Revision}})
	}
	components = append(components, system.ComponentVersion{Name: e.cfg.Runtime.Name(), Version: e.runtimeVersion(), Details: map[string]string{"Shim": e.cfg.Runtime.Shim()}})
	return writeJSON(w, http.StatusOK, system.VersionResponse{
		Platform:      system.PlatformInfo{Name: "moatc"},
		Version:       e.cfg.Version,
		APIVersion:    MaxAPIVersion,
		MinAPIVersion: MinAPIVersion,
		Os:            runtime.GOOS,
		Arch:          runtime.GOARCH,
		Components:    components,
		GitCommit:     engineDetails["GitCommit"],
		GoVersion:     runtime.Version(),
		KernelVersion: kernel,
		BuildTime:     built,
	})
}

// info is GET /info: enough for `docker info` and for clients that look at it (testcontainers
// reads OperatingSystem, ServerVersion, NCPU, MemTotal and the labels).
func info(e *Engine, w http.ResponseWriter, r *http.Request) error {
	recs := e.snapshot()
	var running, stopped, paused int
	for _, rec := range recs {
		switch rec.State.Status {
		case container.StateRunning:
			running++
		case container.StatePaused:
			paused++
		default:
			stopped++
		}
	}
	images := 0
	if imgs, err := e.cfg.Client.ImageService().List(r.Context()); err == nil {
		images = len(imgs)
	}
	hostname, _ := os.Hostname()
	rt := e.cfg.Runtime.Name()
	cgroupVersion := "1"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		cgroupVersion = "2"
	}
	inf := system.Info{
		ID:                e.id,
		Containers:        len(recs),
		ContainersRunning: running,
		ContainersPaused:  paused,
		ContainersStopped: stopped,
		Images:            images,
		Driver:            e.cfg.Snapshotter,
		DriverStatus:      [][2]string{},
		Plugins:           system.PluginsInfo{Volume: []string{}, Network: []string{}, Log: []string{}},
		MemoryLimit:       !e.cfg.Rootless,
		CPUCfsPeriod:      !e.cfg.Rootless,
		CPUCfsQuota:       !e.cfg.Rootless,
		PidsLimit:         true,
		NGoroutines:       runtime.NumGoroutine(),
		SystemTime:        time.Now().Format(time.RFC3339Nano),
		LoggingDriver:     "moatc",
		CgroupDriver:      "cgroupfs",
		CgroupVersion:     cgroupVersion,
		KernelVersion:     kernelVersion(),
		OperatingSystem:   osName(),
		OSType:            "linux",
		Architecture:      unameMachine(),
		NCPU:              runtime.NumCPU(),
		MemTotal:          memTotal(),
		DockerRootDir:     e.cfg.StateDir,
		Name:              hostname,
		Labels:            []string{"moatc.namespace=" + e.cfg.Client.Namespace, "moatc.runtime=" + rt},
		ServerVersion:     e.cfg.Version,
		Runtimes:          map[string]system.RuntimeWithStatus{rt: {Runtime: system.Runtime{Type: e.cfg.Runtime.Shim()}}},
		DefaultRuntime:    rt,
		Swarm:             swarm.Info{LocalNodeState: swarm.LocalNodeStateInactive},
		SecurityOptions:   []string{"name=seccomp,profile=builtin", "name=no-new-privileges"},
		Containerd:        &system.ContainerdInfo{Address: e.cfg.Client.Address, Namespaces: system.ContainerdNamespaces{Containers: e.cfg.Client.Namespace, Plugins: e.cfg.Client.Namespace}},
		Warnings:          []string{},
	}
	if e.cfg.Net == nil {
		inf.Warnings = append(inf.Warnings, "WARNING: this engine has no network: its containers have loopback only, and -p is refused")
	}
	if e.cfg.InitBinary != "" {
		inf.InitBinary = e.cfg.InitBinary
		inf.InitCommit = system.Commit{ID: "tini"}
	}
	if v, err := e.cfg.Client.Version(r.Context()); err == nil {
		inf.ContainerdCommit = system.Commit{ID: v.Version}
	}
	inf.RuncCommit = system.Commit{ID: e.runtimeVersion()}
	return writeJSON(w, http.StatusOK, inf)
}

// runtimeVersion is the version `make setup` recorded for the runtime, or "".
func (e *Engine) runtimeVersion() string {
	for _, b := range e.cfg.Runtime.Binaries() {
		if b == "runc" || b == "runsc" {
			if _, v, err := ctrd.BinaryVersion(e.cfg.Prefix, b); err == nil {
				return v
			}
		}
	}
	return ""
}

// gitCommit and buildTime are moatc's, from the build's VCS stamp.
func gitCommit() string { return orUnknown(buildSetting("vcs.revision")) }
func buildTime() string { return orUnknown(buildSetting("vcs.time")) }

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func buildSetting(key string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, s := range bi.Settings {
		if s.Key == key {
			return s.Value
		}
	}
	return ""
}

func kernelVersion() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func unameMachine() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return runtime.GOARCH
	}
	return unix.ByteSliceToString(u.Machine[:])
}

// osName is the host's PRETTY_NAME from os-release.
func osName() string {
	f, err := os.Open("/etc/os-release")
	if err != nil {
		return "Linux"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return "Linux"
}

// memTotal is the host's memory in bytes.
func memTotal() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}
