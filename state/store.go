// Package state keeps moatc's run records on disk: one directory per run holding
// metadata.json and the run's log. Writes are atomic (temp file, fsync, rename) and every
// read-modify-write happens under an flock, so concurrent moatc processes never corrupt a record.
package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/internal/lockfile"
)

// Run states.
const (
	Created  = "created"  // record written, container not started yet
	Running  = "running"  // task started
	Stopping = "stopping" // stop requested
	Stopped  = "stopped"  // task exited; ExitCode is set
	Failed   = "failed"   // moatc could not start it, or lost it; Error says why
)

// Mount is a bind mount into the container.
type Mount struct {
	Source    string `json:"source,omitempty"` // as written (flag or moatc.yaml), e.g. ./data
	Host      string `json:"host"`             // the host directory mounted, symlinks resolved
	Container string `json:"container"`
	ReadOnly  bool   `json:"read_only,omitempty"`
}

// Spec is what a run was asked to do, resolved from flags and moatc.yaml.
type Spec struct {
	Image       string   `json:"image"`
	Command     []string `json:"command"`
	Env         []string `json:"env,omitempty"`
	Mounts      []Mount  `json:"mounts,omitempty"`
	User        string   `json:"user"`
	Interactive bool     `json:"interactive,omitempty"`
	TTY         bool     `json:"tty,omitempty"`
	Detach      bool     `json:"detach,omitempty"`
	Runtime     Runtime  `json:"runtime"`            // gvisor or runc
	Platform    string   `json:"platform,omitempty"` // gVisor platform
	Debug       bool     `json:"debug,omitempty"`
	Network     Network  `json:"network"`           // default or none
	Publish     []string `json:"publish,omitempty"` // -p specs, [IP:]HOST:CONTAINER[/proto]
	Memory      int64    `json:"memory,omitempty"`
	CPUs        float64  `json:"cpus,omitempty"`
	Pids        int64    `json:"pids,omitempty"`       // the most processes and threads at once
	HostPorts   []string `json:"host_ports,omitempty"` // host ports moatc-host opens, PORT/PROTO
	LogMax      int64    `json:"log_max,omitempty"`    // the log's cap in bytes
	CapAdd      []string `json:"cap_add,omitempty"`    // capabilities beyond Docker's default set
	// Grants name stored credentials the run's proxy adds to its requests (never the values).
	Grants []string `json:"grants,omitempty"`
	Policy string   `json:"policy,omitempty"` // egress policy: permissive (default) or strict
	Allow  []string `json:"allow,omitempty"`  // hosts a strict run may reach
	// UpstreamCA is a PEM bundle the proxy trusts for upstream servers, besides the system's.
	UpstreamCA string `json:"upstream_ca,omitempty"`

	// Docker's run flags of the same names.
	Remove      bool              `json:"remove,omitempty"`       // --rm: the record goes once the run ends
	Workdir     string            `json:"workdir,omitempty"`      // -w; empty is /workspace
	Init        bool              `json:"init,omitempty"`         // --init: tini as PID 1
	ReadOnly    bool              `json:"read_only,omitempty"`    // --read-only rootfs
	Tmpfs       []Tmpfs           `json:"tmpfs,omitempty"`        // --tmpfs
	Hostname    string            `json:"hostname,omitempty"`     // empty is the run's name
	Labels      map[string]string `json:"labels,omitempty"`       // --label, never moatc.*
	StopTimeout *int              `json:"stop_timeout,omitempty"` // seconds moatc stop waits by default
	WorkspaceRO bool              `json:"workspace_ro,omitempty"` // the workspace mounted read-only

	// Docker is the run's docker dependency mode: "host", "dind" or "" (no engine socket).
	Docker string `json:"docker,omitempty"`
	// DindImages are images of moatc's store copied into a dind run's namespace (--dind-image).
	DindImages []string `json:"dind_images,omitempty"`
}

// Runtime is how a run is isolated.
type Runtime string

const (
	GVisor Runtime = "gvisor" // the default: gVisor's user-space kernel
	Runc   Runtime = "runc"   // --no-sandbox: the host kernel
)

// Network is a run's network mode.
type Network string

const (
	NetworkDefault Network = "default" // a private network with egress
	NetworkNone    Network = "none"    // loopback only
)

// Tmpfs is a tmpfs mounted in the container (--tmpfs PATH[:OPTIONS]).
type Tmpfs struct {
	Path    string   `json:"path"`
	Options []string `json:"options,omitempty"`
}

// Run is one run's metadata.json.
type Run struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Workspace   string     `json:"workspace"`
	Spec        Spec       `json:"spec"`
	State       string     `json:"state"`
	ContainerID string     `json:"container_id"`
	Namespace   string     `json:"namespace"`
	Address     string     `json:"address"`
	Pid         int        `json:"pid,omitempty"`
	IP          string     `json:"ip,omitempty"`      // the run's address on its network
	Gateway     string     `json:"gateway,omitempty"` // the host's address, moatc-host inside
	Ports       []string   `json:"ports,omitempty"`   // published, e.g. 127.0.0.1:8080->80/tcp
	ExitCode    *int       `json:"exit_code,omitempty"`
	Error       string     `json:"error,omitempty"`
	Created     time.Time  `json:"created"`
	Started     *time.Time `json:"started,omitempty"`
	Finished    *time.Time `json:"finished,omitempty"`
	Restarts    int        `json:"restarts,omitempty"` // times `moatc restart` started it again
	// Warm: the run took a warm pool's member (its network made ahead, and under gVisor its
	// sandbox booted ahead: Sandbox, the container its own runs in, removed with the run).
	Warm    bool   `json:"warm,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
	// Kube is where a cluster run (`moatc kube run`) runs; nil for a run on this machine.
	Kube *Kube `json:"kube,omitempty"`
	// Output says who writes the run's log: "shim" (its logger, `moatc _log`, started by the
	// shim: the output outlives every moatc process) or "moatc" (the supervisor, for runs
	// with stdin or a terminal).
	Output string `json:"output,omitempty"`
	// Supervisor is the moatc process that records the run's end (and, for Output "moatc",
	// copies its IO). When it is
	// gone while the run is active, the run was abandoned (see run.Reconcile).
	Supervisor *Process `json:"supervisor,omitempty"`
}

// Kube is a cluster run's place: its objects carry the label moatc.run-id=ID there.
type Kube struct {
	Kubeconfig string `json:"kubeconfig,omitempty"` // "" is the default loading rules
	Context    string `json:"context"`
	Namespace  string `json:"namespace"`
	Server     string `json:"server,omitempty"`
	Pod        string `json:"pod"`
	Keep       bool   `json:"keep,omitempty"` // --keep: the objects stay after the run
}

// Process names a process robustly against pid reuse.
type Process struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"` // clock ticks since boot, /proc/PID/stat field 22
}

// Active reports whether the run may still have a task.
func (r *Run) Active() bool {
	return r.State == Created || r.State == Running || r.State == Stopping
}

// Store is the runs directory. Every change of a run's life (created, started, exited,
// removed) is appended to the events log too: the store is the one place all of moatc's
// processes (the foreground run, the detached supervisor, stop, destroy) go through.
type Store struct {
	dir       string
	events    string // the events log; default EventsPath
	capEvents int64  // rotation size; default eventsCap
}

// Open returns the store rooted at dir, creating it.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating runs directory: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir returns the directory of run id.
func (s *Store) Dir(id string) string { return filepath.Join(s.dir, id) }

// LogPath returns the path of run id's log.
func (s *Store) LogPath(id string) string { return filepath.Join(s.dir, id, "output.log") }

// ErrNotFound is returned when no run matches a reference.
var ErrNotFound = errors.New("no such run")

// NameInUseError is returned by Create when the name is taken.
type NameInUseError struct{ Name, ID string }

func (e *NameInUseError) Error() string {
	return fmt.Sprintf("the name %q is in use by run %s: pick another with --name, or remove that run with `moatc destroy %s`", e.Name, e.ID, e.Name)
}

// AmbiguousError is returned when a reference matches more than one run.
type AmbiguousError struct {
	Ref string
	IDs []string
}

func (e *AmbiguousError) Error() string {
	return fmt.Sprintf("%q matches %d runs (%s): give more of the id", e.Ref, len(e.IDs), strings.Join(e.IDs, ", "))
}

// NewID returns a fresh 12-hex-digit run id.
func NewID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}

// Create writes a new record. Under the store lock it checks that the name is free, so two
// processes creating the same name concurrently cannot both succeed.
func (s *Store) Create(r *Run) error {
	unlock, err := Lock(filepath.Join(s.dir, ".lock"))
	if err != nil {
		return err
	}
	defer unlock()
	runs, err := s.List()
	if err != nil {
		return err
	}
	for _, o := range runs {
		if o.Name == r.Name {
			return &NameInUseError{Name: r.Name, ID: o.ID}
		}
		if o.ID == r.ID {
			return fmt.Errorf("run id %s already exists", r.ID)
		}
	}
	if err := os.Mkdir(s.Dir(r.ID), 0o700); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	if err := writeJSON(filepath.Join(s.Dir(r.ID), "metadata.json"), r); err != nil {
		os.RemoveAll(s.Dir(r.ID)) // no half-made run left behind
		return fmt.Errorf("writing the record of run %s: %w", r.ID, err)
	}
	s.emit(newEvent(EventCreated, r))
	return nil
}

// Incomplete lists run directories without a readable record that are older than age: runs
// whose creation failed half-way (a full disk, a crash), which List cannot show.
func (s *Store) Incomplete(age time.Duration) ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing runs: %w", err)
	}
	var out []string
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if _, err := s.Get(e.Name()); err == nil {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > age {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Get reads run id.
func (s *Store) Get(id string) (*Run, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir(id), "metadata.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	var r Run
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("reading run %s: %w", id, err)
	}
	return &r, nil
}

// Update applies fn to run id's record under its lock and writes the result atomically.
// fn sees the current record; returning an error leaves the record unchanged.
func (s *Store) Update(id string, fn func(*Run) error) (*Run, error) {
	unlock, err := Lock(filepath.Join(s.Dir(id), ".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	r, err := s.Get(id)
	if err != nil {
		return nil, err
	}
	old := r.State
	if err := fn(r); err != nil {
		return r, err
	}
	if err := writeJSON(filepath.Join(s.Dir(id), "metadata.json"), r); err != nil {
		return r, err
	}
	if typ := transition(old, r.State); typ != "" {
		s.emit(newEvent(typ, r))
	}
	return r, nil
}

// Remove deletes run id's directory.
func (s *Store) Remove(id string) error {
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("invalid run id %q", id)
	}
	r, err := s.Get(id)
	if err != nil {
		r = &Run{ID: id} // a half-made run: no record, still an event
	}
	if _, err := os.Stat(s.Dir(id)); errors.Is(err, os.ErrNotExist) {
		return nil // already gone: nothing removed, no event
	}
	if err := os.RemoveAll(s.Dir(id)); err != nil {
		return err
	}
	s.emit(newEvent(EventRemoved, r))
	return nil
}

// List returns every run, oldest first. Directories without a readable record (a run being
// created, or removed, right now) are skipped.
func (s *Store) List() ([]*Run, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("listing runs: %w", err)
	}
	var runs []*Run
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		r, err := s.Get(e.Name())
		if err != nil {
			continue
		}
		runs = append(runs, r)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].Created.Before(runs[j].Created) })
	return runs, nil
}

// Find resolves a reference: a full id, a unique id prefix, or a name.
func (s *Store) Find(ref string) (*Run, error) {
	runs, err := s.List()
	if err != nil {
		return nil, err
	}
	var byPrefix []*Run
	for _, r := range runs {
		if r.ID == ref || r.Name == ref {
			return r, nil
		}
		if ref != "" && strings.HasPrefix(r.ID, ref) {
			byPrefix = append(byPrefix, r)
		}
	}
	switch len(byPrefix) {
	case 0:
		return nil, fmt.Errorf("%w: %q (see `moatc list`)", ErrNotFound, ref)
	case 1:
		return byPrefix[0], nil
	}
	ids := make([]string, len(byPrefix))
	for i, r := range byPrefix {
		ids[i] = r.ID
	}
	return nil, &AmbiguousError{Ref: ref, IDs: ids}
}

// writeJSON writes v to path atomically: a reader sees the old record or the new one, never
// a torn one, even if moatc is killed half-way.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(path, append(b, '\n'), 0o600)
}

// Lock takes an exclusive flock on path (creating it) and returns its release.
func Lock(path string) (func(), error) { return lockfile.Flock(path, unix.LOCK_EX) }

// Self describes the calling process.
func Self() *Process {
	p, _ := ProcessOf(os.Getpid())
	return p
}

// ProcessOf reads pid's start time; an error means no such process.
func ProcessOf(pid int) (*Process, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return nil, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	var start uint64
	if _, err := fmt.Sscan(f[19], &start); err != nil {
		return nil, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	return &Process{Pid: pid, Start: start}, nil
}

// Alive reports whether p still runs (and is the same process, not a reused pid).
func (p *Process) Alive() bool {
	if p == nil {
		return false
	}
	q, err := ProcessOf(p.Pid)
	if err != nil {
		return false
	}
	// A zombie has exited; its parent just has not reaped it yet.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid)); err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) && s[i+2] == 'Z' {
			return false
		}
	}
	return q.Start == p.Start
}
