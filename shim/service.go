package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	task "github.com/containerd/containerd/api/runtime/task/v2"
	types "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	errgrpc "github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	gvshim "gvisor.dev/gvisor/pkg/shim/v1"
	"gvisor.dev/gvisor/pkg/shim/v1/extension"
	"gvisor.dev/gvisor/pkg/shim/v1/runsccmd"
	"gvisor.dev/gvisor/runsc/specutils"
)

func init() {
	registry.Register(&plugin.Registration{
		Type:     plugins.TTRPCPlugin,
		ID:       "task",
		Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
		InitFn: func(ic *plugin.InitContext) (interface{}, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			return newService(ic.Context, pp.(shim.Publisher), ss.(shutdown.Service))
		},
	})
}

// service is gVisor's task service (its shim redirector over the runsc task
// service) with Create, Start, State, Pause, Resume and Delete wrapped. Every
// other call goes straight to gVisor.
type service struct {
	extension.TaskServiceExt
	sandboxes *sandboxes

	mu      sync.Mutex
	bundles map[string]string        // container id -> bundle, until deleted
	loggers map[string]*binaryLogger // container id -> its binary logger, until deleted
}

func newService(ctx context.Context, publisher shim.Publisher, sd shutdown.Service) (*service, error) {
	inner, err := gvshim.NewShimRedirector(ctx, publisher, sd)
	if err != nil {
		return nil, err
	}
	// Must follow NewShimRedirector: the runsc task service has just taken
	// the exit channel it consumes (exits are now routed through sandboxes
	// before reaching it) and installed its process monitor for runsc
	// commands (now wrapped by runscMonitor).
	sb := startSandboxes()
	runsccmd.Monitor = newRunscMonitor(runsccmd.Monitor, sb)
	return &service{TaskServiceExt: inner, sandboxes: sb, bundles: map[string]string{}, loggers: map[string]*binaryLogger{}}, nil
}

// RegisterTTRPC serves this wrapper, not the inner service, as the task API.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	task.RegisterTaskService(server, s)
	return nil
}

// Create implements task.TaskService.
func (s *service) Create(ctx context.Context, r *task.CreateTaskRequest) (*task.CreateTaskResponse, error) {
	root, err := markUntypedAsSandbox(r.Bundle)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runsc shim: %w", err))
	}
	// A marker left in a reused bundle must not make Stop skip its clean-up.
	_ = os.Remove(filepath.Join(r.Bundle, deletedMarker))
	// A binary log URI: the logger runs, and r's stdout and stderr are now
	// FIFOs it reads (binaryio.go).
	logger, err := startBinaryLogger(ctx, r)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("runsc shim: %w", err))
	}
	created := time.Now()
	resp, err := s.TaskServiceExt.Create(ctx, r)
	if err != nil {
		resp, err = s.createFailed(ctx, r, root, err)
	}
	if logger != nil {
		logger.created(err == nil)
	}
	if err != nil {
		return resp, err
	}
	s.mu.Lock()
	s.bundles[r.ID] = r.Bundle
	if logger != nil {
		s.loggers[r.ID] = logger
	}
	s.mu.Unlock()
	// The pid of a root container is its sandbox's pid, whose exit status is
	// the container's. (A subcontainer reports the same pid, but the sandbox's
	// status is not its own.)
	if root && resp.Pid > 0 {
		s.sandboxes.track(r.ID, int(resp.Pid), created)
	}
	return resp, nil
}

// Start implements task.TaskService.
func (s *service) Start(ctx context.Context, r *task.StartRequest) (*task.StartResponse, error) {
	resp, err := s.TaskServiceExt.Start(ctx, r)
	if err == nil && r.ExecID == "" {
		s.sandboxes.update(r.ID, func(sb *sandbox) { sb.started = true })
		// Settle now, not in the `runsc wait` gVisor starts in the
		// background, whether the sandbox's state can be answered from the
		// reaper: containerd asks for the state as soon as Start returns.
		s.sandboxes.watch(r.ID)
	}
	return resp, err
}

// State implements task.TaskService. A task with a binary logger reports the
// stdio it was created with, as the runc shim does, not the logger's FIFOs.
func (s *service) State(ctx context.Context, r *task.StateRequest) (*task.StateResponse, error) {
	resp, err := s.TaskServiceExt.State(ctx, r)
	if err == nil && r.ExecID == "" {
		s.mu.Lock()
		logger := s.loggers[r.ID]
		s.mu.Unlock()
		if logger != nil {
			resp.Stdout, resp.Stderr = logger.stdout, logger.stderr
		}
	}
	return resp, err
}

// Pause implements task.TaskService. While a container is paused, or may be,
// its state is asked of runsc.
func (s *service) Pause(ctx context.Context, r *task.PauseRequest) (*types.Empty, error) {
	s.sandboxes.update(r.ID, func(sb *sandbox) { sb.paused = true })
	return s.TaskServiceExt.Pause(ctx, r)
}

// Resume implements task.TaskService.
func (s *service) Resume(ctx context.Context, r *task.ResumeRequest) (*types.Empty, error) {
	resp, err := s.TaskServiceExt.Resume(ctx, r)
	if err == nil {
		s.sandboxes.update(r.ID, func(sb *sandbox) { sb.paused = false })
	}
	return resp, err
}

// Delete implements task.TaskService.
func (s *service) Delete(ctx context.Context, r *task.DeleteRequest) (*task.DeleteResponse, error) {
	// The init's binary logger ends with its output: Delete returns once it
	// has exited, so the log is complete (bounded: see deleting).
	var loggerDone func(deleted bool)
	if r.ExecID == "" {
		s.mu.Lock()
		if logger := s.loggers[r.ID]; logger != nil {
			loggerDone = logger.deleting()
		}
		s.mu.Unlock()
	}
	resp, err := s.TaskServiceExt.Delete(ctx, r)
	if loggerDone != nil {
		loggerDone(err == nil)
	}
	if err == nil && r.ExecID == "" {
		s.sandboxes.untrack(r.ID)
		s.mu.Lock()
		bundle, ok := s.bundles[r.ID]
		delete(s.bundles, r.ID)
		delete(s.loggers, r.ID)
		s.mu.Unlock()
		if ok {
			markDeleted(bundle)
		}
	}
	return resp, err
}

// Shutdown implements task.TaskService. gVisor's shim redirector answers a
// Shutdown that leaves containers running (a grouped shim, after one of its
// containers is deleted) with no response and no error, which ttrpc cannot
// send ("marshal called with nil"): containerd then fails the Delete of a
// task that was deleted. An empty response says the same, sendably.
//
// With no container left, gVisor's Shutdown exits the process at once
// (os.Exit), before the shutdown callback that removes the shim's socket has
// run: every shim left its socket in /run/containerd/s. It goes first here.
func (s *service) Shutdown(ctx context.Context, r *task.ShutdownRequest) (*types.Empty, error) {
	s.mu.Lock()
	last := len(s.bundles) == 0
	s.mu.Unlock()
	if last {
		if address, err := shim.ReadAddress("address"); err == nil && address != "" {
			_ = shim.RemoveSocket(address)
		}
	}
	resp, err := s.TaskServiceExt.Shutdown(ctx, r)
	if resp == nil && err == nil {
		resp = &types.Empty{}
	}
	return resp, err
}

// markUntypedAsSandbox gives a spec with no container-type annotation the
// annotation io.kubernetes.cri.container-type=sandbox. It reports whether
// the container is the root container of its sandbox.
//
// runsc treats a container whose type is unspecified as the root container of
// a new sandbox, but gVisor's shim passes the container's stdio to
// `runsc create` only when the type is explicitly "sandbox". Otherwise it runs
// `runsc create` with its output captured into a buffer, the new sandbox
// inherits the write end of that pipe, and the shim waits forever for EOF:
// Create never returns. Saying explicitly what runsc assumes anyway makes the
// two agree. CRI containers (which carry the annotation) are not touched.
func markUntypedAsSandbox(bundle string) (root bool, _ error) {
	path := filepath.Join(bundle, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return false, fmt.Errorf("decode spec: %w", err)
	}
	if specutils.SpecContainerType(&spec) != specutils.ContainerTypeUnspecified {
		return specutils.IsRootContainer(&spec), nil
	}
	// Edit the document generically so that nothing the spec types do not know
	// about is lost.
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return false, fmt.Errorf("decode spec: %w", err)
	}
	annotations := spec.Annotations
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[specutils.ContainerdContainerTypeAnnotation] = specutils.ContainerdContainerTypeSandbox
	if doc["annotations"], err = json.Marshal(annotations); err != nil {
		return false, err
	}
	if b, err = json.Marshal(doc); err != nil {
		return false, err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return false, fmt.Errorf("write spec: %w", err)
	}
	log.L.Debugf("runsc shim: spec in %s has no container type, marked as %s", bundle, specutils.ContainerdContainerTypeSandbox)
	return true, nil
}
