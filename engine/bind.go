package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/mount"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/moatc/moatc/ctrd"
	mountpin "github.com/moatc/moatc/mounts"
)

// Bind mounts and volumes. The workload is the engine's client and is not trusted: a bind
// source is a path as the workload sees it, mapped through the run's own mounts (Config.Mounts)
// and resolved inside the mount's host directory with no symbolic link leaving it. What is
// bound is what was opened: each start opens the source again, pins the open directory (see
// package mounts) and lets the pin go once the task exists, as runs do with their own mounts.

// Kinds of ctrMount.
const (
	kindBind   = "bind"
	kindVolume = "volume"
	kindSocket = "socket" // the engine's own socket
)

// ctrMount is one bind or volume of a container, as the engine keeps it (mounts.json in the
// container's directory).
type ctrMount struct {
	Kind string
	// Source: a bind's path as the workload sees it; a volume's name.
	Source   string
	Dest     string
	ReadOnly bool
	// Anonymous volumes (-v /path, an image's VOLUME) go with the container (rm -v, --rm).
	Anonymous    bool
	NonRecursive bool   `json:",omitempty"`
	Subpath      string `json:",omitempty"` // a volume's
	Propagation  string `json:",omitempty"`
	NoCopy       bool   `json:",omitempty"` // a volume's: not filled from the image (copyUp)
}

// parseMounts reads a create request's binds, mounts and the image's volumes into the
// engine's mounts, and its tmpfs mounts. Pure: checks what can be checked without the host.
func parseMounts(hc *container.HostConfig, cfg *container.Config) ([]ctrMount, []specs.Mount, error) {
	var out []ctrMount
	var tmpfs []specs.Mount
	dests := map[string]bool{}
	add := func(m ctrMount) error {
		if !path.IsAbs(m.Dest) {
			return invalid("invalid mount config: the destination %q must be an absolute path", m.Dest)
		}
		m.Dest = path.Clean(m.Dest)
		if m.Dest == "/" {
			return invalid("invalid mount config: the destination cannot be '/'")
		}
		if dests[m.Dest] {
			return invalid("Duplicate mount point: %s", m.Dest)
		}
		dests[m.Dest] = true
		switch m.Propagation {
		case "", string(mount.PropagationPrivate), string(mount.PropagationRPrivate):
		case string(mount.PropagationShared), string(mount.PropagationRShared), string(mount.PropagationSlave), string(mount.PropagationRSlave):
			return forbidden("moatc refuses the bind propagation %s of %s: mounts of a container started through its engine are private (a shared or slave mount would carry mounts between it and the host)", m.Propagation, m.Dest)
		default:
			return invalid("invalid propagation mode: %s", m.Propagation)
		}
		if m.Kind != kindBind && m.Propagation != "" {
			return invalid("invalid mount config: propagation is for bind mounts only")
		}
		out = append(out, m)
		return nil
	}
	for _, b := range hc.Binds {
		m, err := parseBind(b)
		if err != nil {
			return nil, nil, err
		}
		if err := add(m); err != nil {
			return nil, nil, err
		}
	}
	for _, mt := range hc.Mounts {
		switch mt.Type {
		case mount.TypeBind:
			if mt.VolumeOptions != nil || mt.TmpfsOptions != nil || mt.ImageOptions != nil {
				return nil, nil, invalid("invalid mount config for type \"bind\": only bind options go with a bind mount")
			}
			if !path.IsAbs(mt.Source) {
				return nil, nil, invalid("invalid mount config for type \"bind\": invalid mount path: '%s' mount path must be absolute", mt.Source)
			}
			m := ctrMount{Kind: kindBind, Source: mt.Source, Dest: mt.Target, ReadOnly: mt.ReadOnly}
			if o := mt.BindOptions; o != nil {
				if o.ReadOnlyNonRecursive {
					return nil, nil, forbidden("moatc refuses bind-recursive=writable (readonly non-recursive): the mounts below a read-only bind stay read-only")
				}
				if o.CreateMountpoint {
					return nil, nil, notImplemented("moatc does not support bind-create-src (CreateMountpoint) yet")
				}
				m.NonRecursive = o.NonRecursive
				m.Propagation = string(o.Propagation)
			}
			if err := add(m); err != nil {
				return nil, nil, err
			}
		case mount.TypeVolume:
			if mt.BindOptions != nil || mt.TmpfsOptions != nil || mt.ImageOptions != nil {
				return nil, nil, invalid("invalid mount config for type \"volume\": only volume options go with a volume mount")
			}
			m := ctrMount{Kind: kindVolume, Source: mt.Source, Dest: mt.Target, ReadOnly: mt.ReadOnly, Anonymous: mt.Source == ""}
			if o := mt.VolumeOptions; o != nil {
				m.NoCopy = o.NoCopy
				if o.DriverConfig != nil && o.DriverConfig.Name != "" && o.DriverConfig.Name != "local" {
					return nil, nil, notImplemented("moatc does not support volume driver %s: its volumes are local directories", o.DriverConfig.Name)
				}
				if o.DriverConfig != nil && len(o.DriverConfig.Options) > 0 {
					return nil, nil, forbidden("moatc refuses volume driver options (--mount volume-opt): a local volume with options mounts a device or a remote share from the host")
				}
				if o.Subpath != "" {
					if path.IsAbs(o.Subpath) || slices.Contains(strings.Split(o.Subpath, "/"), "..") {
						return nil, nil, invalid("invalid mount config for type \"volume\": subpath must be a relative path within the volume")
					}
					m.Subpath = path.Clean(o.Subpath)
				}
			}
			if m.Source != "" && !validVolumeName.MatchString(m.Source) {
				return nil, nil, invalid("invalid volume name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", m.Source)
			}
			if err := add(m); err != nil {
				return nil, nil, err
			}
		case mount.TypeTmpfs:
			if mt.Source != "" {
				return nil, nil, invalid("invalid mount config for type \"tmpfs\": source must be empty")
			}
			opts, err := tmpfsMountOptions(mt)
			if err != nil {
				return nil, nil, err
			}
			if !path.IsAbs(mt.Target) {
				return nil, nil, invalid("invalid mount config: the destination %q must be an absolute path", mt.Target)
			}
			dst := path.Clean(mt.Target)
			if dests[dst] {
				return nil, nil, invalid("Duplicate mount point: %s", dst)
			}
			dests[dst] = true
			tmpfs = append(tmpfs, specs.Mount{Destination: dst, Type: "tmpfs", Source: "tmpfs", Options: opts})
		default:
			return nil, nil, notImplemented("moatc does not support mounts of type %q: bind, volume and tmpfs only", mt.Type)
		}
	}
	// -v /path and the image's VOLUMEs: a new anonymous volume each, unless something else
	// is mounted there.
	anon := make([]string, 0, len(cfg.Volumes))
	for d := range cfg.Volumes {
		anon = append(anon, d)
	}
	sort.Strings(anon)
	for _, d := range anon {
		if path.IsAbs(d) && dests[path.Clean(d)] {
			continue
		}
		if err := add(ctrMount{Kind: kindVolume, Dest: d, Anonymous: true}); err != nil {
			return nil, nil, err
		}
	}
	for dst := range hc.Tmpfs {
		if dests[path.Clean(dst)] {
			return nil, nil, invalid("Duplicate mount point: %s", path.Clean(dst))
		}
	}
	return out, tmpfs, nil
}

// parseBind reads one of -v's SRC:DST[:MODE], NAME:DST[:MODE] or /DST.
func parseBind(b string) (ctrMount, error) {
	parts := strings.Split(b, ":")
	var m ctrMount
	switch len(parts) {
	case 1:
		m = ctrMount{Kind: kindVolume, Dest: parts[0], Anonymous: true}
	case 2, 3:
		m = ctrMount{Source: parts[0], Dest: parts[1]}
		if len(parts) == 3 {
			for _, o := range strings.Split(parts[2], ",") {
				switch o {
				case "ro":
					m.ReadOnly = true
				case "nocopy":
					m.NoCopy = true
				case "rw", "z", "Z", "":
				case "private", "rprivate", "shared", "rshared", "slave", "rslave":
					m.Propagation = o
				default:
					return m, invalid("invalid mode: %s", parts[2])
				}
			}
		}
		switch {
		case m.Source == "":
			return m, invalid("invalid volume specification: '%s'", b)
		case path.IsAbs(m.Source):
			m.Kind = kindBind
		case validVolumeName.MatchString(m.Source):
			m.Kind = kindVolume
		default:
			return m, invalid("%q includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path", m.Source)
		}
	default:
		return m, invalid("invalid volume specification: '%s'", b)
	}
	if m.Kind == kindVolume && m.Propagation != "" {
		return m, invalid("invalid mode: %s: propagation is for bind mounts only", parts[len(parts)-1])
	}
	return m, nil
}

// tmpfsAllowed are the tmpfs options a container may give: no suid, no dev.
var tmpfsAllowed = []string{"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "exec", "noexec", "ro", "rw",
	"nosuid", "nodev", "noatime", "atime", "nodiratime", "diratime", "relatime", "norelatime", "strictatime", "nostrictatime", "huge", "tmpcopyup", "notmpcopyup"}

// checkTmpfsOptions refuses tmpfs options beyond tmpfsAllowed (--tmpfs DST:OPTS).
func checkTmpfsOptions(dst string, opts []string) error {
	for _, o := range opts {
		k, _, _ := strings.Cut(o, "=")
		switch {
		case k == "":
		case k == "suid" || k == "dev":
			return forbidden("moatc refuses the tmpfs option %s on %s: a container's tmpfs is nosuid and nodev", k, dst)
		case !slices.Contains(tmpfsAllowed, k):
			return invalid("invalid tmpfs option %q on %s", o, dst)
		}
	}
	return nil
}

// tmpfsMountOptions is --mount type=tmpfs's options as mount options, Docker's defaults first.
func tmpfsMountOptions(mt mount.Mount) ([]string, error) {
	opts := []string{"nosuid", "nodev", "noexec"}
	if mt.ReadOnly {
		opts = append(opts, "ro")
	}
	if o := mt.TmpfsOptions; o != nil {
		if o.SizeBytes < 0 {
			return nil, invalid("invalid tmpfs size %d", o.SizeBytes)
		}
		if o.SizeBytes > 0 {
			opts = append(opts, "size="+strconv.FormatInt(o.SizeBytes, 10))
		}
		if o.Mode != 0 {
			opts = append(opts, "mode="+strconv.FormatUint(uint64(o.Mode.Perm()), 8))
		}
		for _, kv := range o.Options {
			if len(kv) == 0 || len(kv) > 2 {
				return nil, invalid("invalid tmpfs option %v", kv)
			}
			opts = append(opts, strings.Join(kv, "="))
		}
	}
	if err := checkTmpfsOptions(mt.Target, opts); err != nil {
		return nil, err
	}
	return append(opts, "nosuid", "nodev"), nil
}

// mapBind maps a bind source as the workload sees it to the run's mount holding it (the
// longest Target that is the source or one of its parents) and the rest of the path below
// it. Pure.
func mapBind(mounts []Mount, socketTarget, src string) (Mount, string, error) {
	if !path.IsAbs(src) {
		return Mount{}, "", invalid("invalid bind source %q: it must be an absolute path", src)
	}
	clean := path.Clean(src)
	best := -1
	for i, m := range mounts {
		t := path.Clean(m.Target)
		if mountpin.Inside(clean, t) && (best < 0 || len(t) > len(path.Clean(mounts[best].Target))) {
			best = i
		}
	}
	if best < 0 {
		also := ""
		if socketTarget != "" {
			also = ", and the engine's socket " + socketTarget
		}
		return Mount{}, "", forbidden("moatc refuses to bind %s: a container started through its engine may bind only paths under the run's own mounts (%s)%s", src, mountList(mounts), also)
	}
	m := mounts[best]
	rel := strings.TrimPrefix(strings.TrimPrefix(clean, path.Clean(m.Target)), "/")
	if rel == "" {
		rel = "."
	}
	return m, rel, nil
}

// mountList names the paths a bind may come from, for error messages.
func mountList(mounts []Mount) string {
	if len(mounts) == 0 {
		return "the run has none"
	}
	var ts []string
	for _, m := range mounts {
		t := m.Target
		if m.ReadOnly {
			t += " (read-only)"
		}
		ts = append(ts, t)
	}
	sort.Strings(ts)
	return strings.Join(ts, ", ")
}

// openBeneath opens rel below root as an O_PATH file: no symbolic link, "..", or magic link
// may lead out of root (a link to /etc, or to ../.., is refused: 403). A missing source is
// made (a directory, as Docker's -v does) when create, unless root is read-only.
func openBeneath(root Mount, src, rel string, create bool) (*os.File, error) {
	dfd, err := unix.Open(root.Source, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening the run's mount %s (%s): %w", root.Target, root.Source, err)
	}
	defer unix.Close(dfd)
	how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS}
	fd, err := unix.Openat2(dfd, rel, how)
	if errors.Is(err, unix.ENOENT) && create && !root.ReadOnly {
		r, rerr := os.OpenRoot(root.Source)
		if rerr != nil {
			return nil, fmt.Errorf("opening the run's mount %s: %w", root.Target, rerr)
		}
		merr := r.MkdirAll(rel, 0o755)
		r.Close()
		if merr != nil && !errors.Is(merr, os.ErrExist) {
			if strings.Contains(merr.Error(), "escapes") {
				return nil, escapeError(src, root)
			}
			return nil, invalid("making bind source %s: %v", src, merr)
		}
		fd, err = unix.Openat2(dfd, rel, how)
	}
	switch {
	case errors.Is(err, unix.EXDEV), errors.Is(err, unix.ELOOP):
		return nil, escapeError(src, root)
	case errors.Is(err, unix.ENOENT):
		return nil, invalid("invalid mount config for type \"bind\": bind source path does not exist: %s", src)
	case err != nil:
		return nil, fmt.Errorf("opening bind source %s: %w", src, err)
	}
	return os.NewFile(uintptr(fd), filepath.Join(root.Source, rel)), nil
}

func escapeError(src string, root Mount) error {
	return forbidden("moatc refuses to bind %s: a symbolic link on the way leads out of %s; links are followed only while they stay inside the mount (use a relative link, or bind the real directory)", src, root.Target)
}

// resolveBind opens a bind's source: the engine's socket (nil file, isSocket) or a path in
// one of the run's mounts. ro says the run's mount is read-only.
func (e *Engine) resolveBind(src string, create bool) (f *os.File, isSocket, ro bool, err error) {
	if e.cfg.SocketTarget != "" && e.cfg.Socket != "" && path.Clean(src) == path.Clean(e.cfg.SocketTarget) {
		return nil, true, false, nil
	}
	m, rel, err := mapBind(e.cfg.Mounts, e.cfg.SocketTarget, src)
	if err != nil {
		return nil, false, false, err
	}
	f, err = openBeneath(m, src, rel, create)
	return f, false, m.ReadOnly, err
}

// pinDir holds a container's pinned bind sources while its task is made.
func (e *Engine) pinDir(id string) string { return filepath.Join(e.cfg.StateDir, "pins", id) }

// specMounts are a container's binds and volumes as OCI mounts: binds and volume subpaths
// from their pins (made at each start by pinMounts), volumes from their directory, the
// engine's socket from the host's. It checks every bind now, so a create is refused early.
func (e *Engine) specMounts(id string, ms []ctrMount) ([]specs.Mount, error) {
	var out []specs.Mount
	for i, m := range ms {
		opts := []string{"rbind", "rprivate", "nosuid", "nodev"}
		if m.NonRecursive {
			opts[0] = "bind"
		}
		src := filepath.Join(e.pinDir(id), strconv.Itoa(i))
		switch m.Kind {
		case kindBind:
			f, isSocket, ro, err := e.resolveBind(m.Source, true)
			if err != nil {
				return nil, err
			}
			if isSocket {
				ms[i].Kind = kindSocket
				src = e.cfg.Socket
			} else {
				f.Close()
				if ro {
					ms[i].ReadOnly = true
				}
			}
		case kindVolume:
			if m.Subpath == "" {
				src = e.volumeData(m.Source)
			}
		}
		if ms[i].ReadOnly {
			opts = append(opts, "ro")
		}
		out = append(out, specs.Mount{Destination: m.Dest, Type: "bind", Source: src, Options: opts})
	}
	return out, nil
}

// pinMounts opens each bind (and volume subpath) of a container again and pins it where its
// spec mounts it from. The returned func lets the pins go: call it once the task exists.
func (e *Engine) pinMounts(id string, ms []ctrMount) (func(), error) {
	dir := e.pinDir(id)
	unpin := func() { mountpin.Unpin(dir) }
	mountpin.Unpin(dir) // what a crash left
	for i, m := range ms {
		var f *os.File
		var err error
		switch {
		case m.Kind == kindBind:
			f, _, _, err = e.resolveBind(m.Source, false)
		case m.Kind == kindVolume && m.Subpath != "":
			root := Mount{Target: m.Source, Source: e.volumeData(m.Source)}
			f, err = openBeneath(root, m.Source+"/"+m.Subpath, m.Subpath, false)
		default:
			continue
		}
		if err != nil {
			unpin()
			return nil, err
		}
		_, err = mountpin.Pin(f, dir, strconv.Itoa(i))
		f.Close()
		if err != nil {
			unpin()
			return nil, err
		}
	}
	return unpin, nil
}

// readMounts reads a container's mounts.json (none when it has no file).
func readMounts(dir string) ([]ctrMount, error) {
	b, err := os.ReadFile(filepath.Join(dir, "mounts.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ms []ctrMount
	if err := json.Unmarshal(b, &ms); err != nil {
		return nil, fmt.Errorf("reading %s: %w", filepath.Join(dir, "mounts.json"), err)
	}
	return ms, nil
}

func writeMounts(dir string, ms []ctrMount) error {
	if len(ms) == 0 {
		return nil
	}
	b, err := json.Marshal(ms)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "mounts.json"), b, 0o600)
}

// containerMounts makes a new container's mounts: its binds checked, its volumes (from
// --volumes-from too) made when missing, anonymous ones named. Call with e.volMu held.
func (e *Engine) containerMounts(id string, hc *container.HostConfig, cfg *container.Config) ([]ctrMount, []specs.Mount, error) {
	ms, tmpfs, err := parseMounts(hc, cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, ref := range hc.VolumesFrom {
		name, mode, _ := strings.Cut(ref, ":")
		var ro *bool
		switch mode {
		case "":
		case "ro", "rw":
			v := mode == "ro"
			ro = &v
		default:
			return nil, nil, invalid("invalid mode for --volumes-from %s: %s", name, mode)
		}
		// Only the engine's own containers: lookup knows no other.
		src, err := e.lookup(name)
		if err != nil {
			return nil, nil, err
		}
		theirs, err := readMounts(src.dir)
		if err != nil {
			return nil, nil, err
		}
	next:
		for _, t := range theirs {
			for _, m := range ms {
				if m.Dest == t.Dest {
					continue next
				}
			}
			if t.Kind == kindSocket {
				t.Kind = kindBind // resolved again, as any bind
			}
			t.Anonymous = false // the other container's
			if ro != nil {
				t.ReadOnly = *ro
			}
			ms = append(ms, t)
		}
	}
	for i := range ms {
		if ms[i].Kind == kindVolume && ms[i].Source == "" {
			ms[i].Source = newID()
		}
	}
	mounts, err := e.specMounts(id, ms)
	if err != nil {
		return nil, nil, err
	}
	var made []ctrMount
	for _, m := range ms {
		if m.Kind != kindVolume {
			continue
		}
		if _, err := e.ensureVolume(m.Source, nil, m.Anonymous); err != nil {
			e.dropNewAnonymous(made)
			return nil, nil, err
		}
		made = append(made, m)
	}
	for dst, opts := range hc.Tmpfs {
		if err := checkTmpfsOptions(dst, strings.Split(opts, ",")); err != nil {
			e.dropNewAnonymous(made)
			return nil, nil, err
		}
	}
	return ms, append(mounts, tmpfs...), nil
}

// dropNewAnonymous removes the anonymous volumes made for a container whose create failed.
// Call with e.volMu held.
func (e *Engine) dropNewAnonymous(ms []ctrMount) {
	for _, m := range ms {
		if m.Kind == kindVolume && m.Anonymous {
			e.removeVolume(m.Source)
		}
	}
}

func hasSocket(ms []ctrMount) bool {
	return slices.ContainsFunc(ms, func(m ctrMount) bool { return m.Kind == kindSocket })
}

// socketRuntime is the runtime of a container that binds the engine's socket: gVisor must
// be let connect to a host unix socket (runsc's host-uds=open); no other container gets it.
func socketRuntime(rt ctrd.Runtime) ctrd.Runtime {
	if g, ok := rt.(ctrd.GVisor); ok {
		g.HostUDS = true
		return g
	}
	return rt
}

// mountEvents emits Docker's volume mount events of a container's start.
func (e *Engine) mountEvents(id string, ms []ctrMount) {
	for _, m := range ms {
		if m.Kind != kindVolume {
			continue
		}
		rw := "true"
		if m.ReadOnly {
			rw = "false"
		}
		e.emit(events.VolumeEventType, events.ActionMount, m.Source, map[string]string{"container": id,
			"destination": m.Dest, "driver": "local", "propagation": "", "read/write": rw})
	}
}

// pinContainerMounts pins c's binds for the task about to be made (see pinMounts).
func (e *Engine) pinContainerMounts(c *ctr) (func(), error) {
	ms, err := readMounts(c.dir)
	if err != nil {
		return nil, err
	}
	if len(ms) == 0 {
		return func() {}, nil
	}
	return e.pinMounts(c.rec.ID, ms)
}

// startedMounts emits the volume mount events of c's start.
func (e *Engine) startedMounts(c *ctr) {
	if ms, err := readMounts(c.dir); err == nil {
		e.mountEvents(c.rec.ID, ms)
	}
}

// unpinAll unmounts the pins an engine killed during a start left (they are the workload's
// directories: the state must never be removed through one).
func (e *Engine) unpinAll() error {
	dir := filepath.Join(e.cfg.StateDir, "pins")
	ents, _ := os.ReadDir(dir)
	for _, d := range ents {
		if err := mountpin.Unpin(filepath.Join(dir, d.Name())); err != nil {
			return fmt.Errorf("releasing the engine's bind pins: %w", err)
		}
	}
	if err := mountpin.Unpin(dir); err != nil {
		return fmt.Errorf("releasing the engine's bind pins: %w", err)
	}
	return nil
}

// mountPoints are a container's binds and volumes as inspect and list show them. A bind's
// Source is its path as the workload sees it (the host's path is the engine's business).
func (e *Engine) mountPoints(dir string) []container.MountPoint {
	ms, _ := readMounts(dir)
	out := []container.MountPoint{}
	for _, m := range ms {
		mode := "rw"
		if m.ReadOnly {
			mode = "ro"
		}
		p := container.MountPoint{Destination: m.Dest, Mode: mode, RW: !m.ReadOnly, Propagation: mount.Propagation(m.Propagation)}
		switch m.Kind {
		case kindVolume:
			p.Type, p.Name, p.Driver, p.Source = mount.TypeVolume, m.Source, "local", e.volumeData(m.Source)
		default:
			p.Type, p.Source = mount.TypeBind, m.Source
			if p.Propagation == "" {
				p.Propagation = mount.PropagationRPrivate
			}
		}
		out = append(out, p)
	}
	return out
}
