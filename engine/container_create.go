package engine

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/moatc/moatc/config"
	"github.com/moatc/moatc/ctrd"
)

func init() {
	route("POST /containers/create", containerCreate)
}

// decodeCreate reads a create request's body and checks what can be checked without the
// image. Pure: it is fuzzed.
func decodeCreate(body []byte) (*container.CreateRequest, error) {
	var req container.CreateRequest
	if err := decodeJSONBytes(body, &req, false); err != nil {
		return nil, err
	}
	if req.Config == nil {
		return nil, invalid("config cannot be empty in order to create a container")
	}
	if req.HostConfig == nil {
		req.HostConfig = &container.HostConfig{}
	}
	if req.Image == "" {
		return nil, invalid("no image given: the container's config needs an Image")
	}
	for _, t := range []string{"Memory", "NanoCpus", "CpuQuota", "CpuPeriod"} {
		if v := map[string]int64{"Memory": req.HostConfig.Memory, "NanoCpus": req.HostConfig.NanoCPUs,
			"CpuQuota": req.HostConfig.CPUQuota, "CpuPeriod": req.HostConfig.CPUPeriod}[t]; v < 0 {
			return nil, invalid("invalid %s %d: it cannot be negative", t, v)
		}
	}
	if req.HostConfig.NanoCPUs > 0 && req.HostConfig.CPUQuota > 0 {
		return nil, invalid("conflicting options: Nano CPUs and CPU Quota cannot both be set")
	}
	for dst := range req.HostConfig.Tmpfs {
		if !strings.HasPrefix(dst, "/") {
			return nil, invalid("invalid tmpfs %q: the path must be absolute", dst)
		}
	}
	return &req, nil
}

// containerCreate is POST /containers/create?name=NAME.
func containerCreate(e *Engine, w http.ResponseWriter, r *http.Request) error {
	name := r.URL.Query().Get("name")
	if name != "" && !validName.MatchString(name) {
		return invalid("Invalid container name (%s), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", name)
	}
	if p := r.URL.Query().Get("platform"); p != "" && !strings.HasPrefix(p, "linux") {
		return invalid("moatc runs linux containers only, not %s", p)
	}
	body, err := readBody(w, r)
	if err != nil {
		return err
	}
	req, err := decodeCreate(body)
	if err != nil {
		return err
	}
	id, warnings, err := e.create(r.Context(), strings.TrimPrefix(name, "/"), req)
	if err != nil {
		return err
	}
	if warnings == nil {
		warnings = []string{}
	}
	return writeJSON(w, http.StatusCreated, container.CreateResponse{ID: id, Warnings: warnings})
}

// create makes a container: its record first (a crash then leaves a record without a
// container, which load removes), then the containerd container.
func (e *Engine) create(ctx context.Context, name string, req *container.CreateRequest) (string, []string, error) {
	ctx = context.WithoutCancel(ctx) // a client that leaves must not cut a create in half
	hc := req.HostConfig
	warnings, err := checkHostConfig(hc, req.Config)
	if err != nil {
		return "", nil, err
	}
	if hc.Init != nil && *hc.Init && e.cfg.InitBinary == "" {
		return "", nil, invalid("--init needs tini-static, which is not installed where moatc runs: install it (apt-get install tini) or drop --init")
	}
	img, err := e.resolveImage(ctx, req.Image)
	if err != nil {
		return "", nil, err
	}
	var ispec ocispec.Image
	if ispec, err = img.Spec(ctx); err != nil {
		return "", nil, fmt.Errorf("reading the config of image %s: %w", img.Name(), err)
	}
	cfg, path, args, err := completeConfig(req.Config, ispec.Config)
	if err != nil {
		return "", nil, err
	}
	cfg.Healthcheck = mergeHealthcheck(cfg.Healthcheck, e.imageHealthcheck(ctx, img))
	if err := checkHealthcheck(cfg.Healthcheck); err != nil {
		return "", nil, err
	}
	if hc.NetworkMode == "" {
		hc.NetworkMode = network.NetworkDefault
	}

	e.createMu.Lock()
	defer e.createMu.Unlock()
	if name == "" {
		for i := 0; ; i++ {
			name = randomName()
			if i > 20 {
				name += "_" + newID()[:6]
			}
			if _, err := e.lookupName(name); err != nil {
				break
			}
		}
	} else if other, err := e.lookupName(name); err == nil {
		return "", nil, conflict("Conflict. The container name \"/%s\" is already in use by container \"%s\". You have to remove (or rename) that container to be able to reuse that name.", name, other.rec.ID)
	}
	var aliases []string
	if nc := req.NetworkingConfig; nc != nil {
		for _, ep := range nc.EndpointsConfig {
			if ep != nil {
				aliases = append(aliases, ep.Aliases...)
			}
		}
	}
	if err := checkNames(cfg.Hostname, aliases); err != nil {
		return "", nil, err
	}
	id := newID()
	if cfg.Hostname == "" {
		cfg.Hostname = id[:12]
	}
	e.volMu.Lock()
	defer e.volMu.Unlock()
	ms, mounts, err := e.containerMounts(id, hc, cfg)
	if err != nil {
		return "", nil, err
	}
	c := &ctr{dir: e.containerDir(id), rec: record{
		ID: id, Name: name, Created: time.Now().UTC(), Image: img.Name(), ImageID: img.Target().Digest.String(),
		Path: path, Args: args, Config: cfg, HostConfig: hc, State: state{Status: container.StateCreated},
	}}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("creating container: %w", err)
	}
	if err := e.save(c); err != nil {
		os.RemoveAll(c.dir)
		return "", nil, err
	}
	if err := writeMounts(c.dir, ms); err != nil {
		os.RemoveAll(c.dir)
		return "", nil, fmt.Errorf("creating container: %w", err)
	}
	spec := ctrd.Container{
		ID: id, RunID: e.cfg.RunID, Role: Role, Image: img, Snapshotter: e.cfg.Snapshotter, Runtime: e.cfg.Runtime,
		Args: append([]string{path}, args...), Env: req.Env, Cwd: req.WorkingDir, User: req.User, TTY: cfg.Tty,
		Hostname: cfg.Hostname, Memory: hc.Memory, ReadOnly: hc.ReadonlyRootfs, Rootless: e.cfg.Rootless,
		Labels: map[string]string{LabelName: name}, Mounts: mounts,
	}
	if hasSocket(ms) {
		spec.Runtime = socketRuntime(e.cfg.Runtime)
	}
	for k, v := range req.Labels {
		// moatc's own labels (the name's, the volumes') are never the workload's to set; it
		// sees its labels in the engine's record, not in containerd's.
		if !strings.HasPrefix(k, "moatc.") {
			spec.Labels[k] = v
		}
	}
	for _, m := range ms {
		if m.Kind == kindVolume {
			spec.Labels[labelVolume+m.Source] = "1"
		}
	}
	switch {
	case hc.NanoCPUs > 0:
		spec.CPUs = float64(hc.NanoCPUs) / 1e9
	case hc.CPUQuota > 0:
		period := hc.CPUPeriod
		if period <= 0 {
			period = 100000
		}
		spec.CPUs = float64(hc.CPUQuota) / float64(period)
	}
	// Docker's default is no limit; a run's is config.DefaultPids, and a container made through
	// the engine gets no more than that unless it asks for a number of its own.
	spec.Pids = config.DefaultPids
	if hc.PidsLimit != nil && *hc.PidsLimit > 0 {
		spec.Pids = *hc.PidsLimit
	}
	for _, cp := range hc.CapAdd {
		n := "CAP_" + strings.TrimPrefix(strings.ToUpper(cp), "CAP_")
		if !slices.Contains(spec.CapAdd, n) {
			spec.CapAdd = append(spec.CapAdd, n)
		}
	}
	spec.CapDrop = capDrop(hc)
	if hc.Init != nil && *hc.Init {
		spec.Init = e.cfg.InitBinary
	}
	for dst, opts := range hc.Tmpfs {
		// Docker's defaults, then the request's (a later option wins: exec over noexec).
		o := []string{"nosuid", "nodev", "noexec"}
		if opts != "" {
			o = append(o, strings.Split(opts, ",")...)
		}
		o = append(o, "nosuid", "nodev") // checkHostConfig refused suid and dev
		spec.Mounts = append(spec.Mounts, specs.Mount{Destination: dst, Type: "tmpfs", Source: "tmpfs", Options: o})
	}
	netns, netMounts, err := e.networkMounts(ctx, id, name, c.dir, cfg.Hostname, hc, cfg.ExposedPorts, req.NetworkingConfig)
	if err != nil {
		os.RemoveAll(c.dir)
		return "", nil, err
	}
	spec.NetNS, spec.Mounts = netns, append(spec.Mounts, netMounts...)
	cc, err := e.cfg.Client.CreateContainer(ctx, spec)
	if err != nil {
		e.detachContainer(ctx, id)
		os.RemoveAll(c.dir)
		e.dropNewAnonymous(ms)
		return "", nil, fmt.Errorf("creating container: %w", err)
	}
	if err := e.copyUp(ctx, cc, ms); err != nil {
		// The container stays (Docker's create would have failed; a volume left half filled
		// is worse than a warning): the volume is what the copy made of it.
		warnings = append(warnings, err.Error())
	}
	e.mu.Lock()
	e.ctrs[id] = c
	e.notify()
	rec := c.rec
	e.mu.Unlock()
	e.containerEvent(events.ActionCreate, rec, nil)
	return id, warnings, nil
}

// lookupName finds a container by its exact name.
func (e *Engine) lookupName(name string) (*ctr, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range e.ctrs {
		if c.rec.Name == name && !c.removed {
			return c, nil
		}
	}
	return nil, notFound("No such container: %s", name)
}

// completeConfig completes the request's config from the image's, as Docker does: the
// command is the request's Entrypoint (then its Cmd alone) or the image's Entrypoint with the
// request's Cmd, else the image's; the environment is the image's overridden by the
// request's; the image's working directory, user, labels, exposed ports, volumes and stop
// signal unless the request sets them. It returns the command's path and arguments too.
func completeConfig(req *container.Config, img ocispec.ImageConfig) (*container.Config, string, []string, error) {
	cfg := *req
	entrypoint, cmd := req.Entrypoint, req.Cmd
	if len(entrypoint) == 0 {
		entrypoint = img.Entrypoint
		if len(cmd) == 0 {
			cmd = img.Cmd
		}
	}
	// Docker's "--entrypoint ''" is [""]: no entrypoint.
	if len(entrypoint) == 1 && entrypoint[0] == "" {
		entrypoint = nil
	}
	argv := append(append([]string(nil), entrypoint...), cmd...)
	if len(argv) == 0 || argv[0] == "" {
		return nil, "", nil, invalid("no command specified")
	}
	cfg.Entrypoint, cfg.Cmd = entrypoint, cmd
	cfg.Env = mergeEnv(img.Env, req.Env)
	if cfg.WorkingDir == "" {
		cfg.WorkingDir = img.WorkingDir
	}
	if cfg.User == "" {
		cfg.User = img.User
	}
	if cfg.StopSignal == "" {
		cfg.StopSignal = img.StopSignal
	}
	if len(img.Labels) > 0 {
		cfg.Labels = map[string]string{}
		for k, v := range img.Labels {
			cfg.Labels[k] = v
		}
		for k, v := range req.Labels {
			cfg.Labels[k] = v
		}
	}
	if len(img.ExposedPorts) > 0 {
		ports := network.PortSet{}
		for p := range img.ExposedPorts {
			if port, err := network.ParsePort(p); err == nil {
				ports[port] = struct{}{}
			}
		}
		for p := range req.ExposedPorts {
			ports[p] = struct{}{}
		}
		cfg.ExposedPorts = ports
	}
	if len(img.Volumes) > 0 && cfg.Volumes == nil {
		cfg.Volumes = map[string]struct{}{}
		for v := range img.Volumes {
			cfg.Volumes[v] = struct{}{}
		}
	}
	return &cfg, argv[0], argv[1:], nil
}

// mergeEnv is base with over's variables replacing or adding to it, in base's order.
func mergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}
