package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/volume"

	"github.com/moatc/moatc/internal/atomicfile"
)

// Volumes are directories on the host: VolumeDir/NAME/_data is what containers mount,
// VolumeDir/NAME/volume.json what Docker shows of it. The driver is "local" and takes no
// options (a local volume with options mounts a device or an NFS share from the host).

func init() {
	route("POST /volumes/create", volumeCreate)
	route("GET /volumes", volumeList)
	route("GET /volumes/{name}", volumeInspect)
	route("DELETE /volumes/{name}", volumeRemove)
	route("POST /volumes/prune", volumePrune)
}

// validVolumeName is Docker's rule for local volume names.
var validVolumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// volRecord is a volume's volume.json.
type volRecord struct {
	Name      string
	Labels    map[string]string
	CreatedAt time.Time
	// Anonymous volumes (made for -v /path or an image's VOLUME) are what prune removes
	// without all=true.
	Anonymous bool
}

func (e *Engine) volumeRoot() string {
	if e.cfg.VolumeDir != "" {
		return e.cfg.VolumeDir
	}
	return filepath.Join(e.cfg.StateDir, "volumes")
}

func (e *Engine) volumeData(name string) string { return filepath.Join(e.volumeRoot(), name, "_data") }

func (e *Engine) volumeInfo(v volRecord) volume.Volume {
	labels := v.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	return volume.Volume{Name: v.Name, Driver: "local", Mountpoint: e.volumeData(v.Name), Labels: labels, Scope: "local",
		CreatedAt: v.CreatedAt.Format(time.RFC3339), Options: map[string]string{}}
}

// getVolume reads a volume's record.
func (e *Engine) getVolume(name string) (volRecord, error) {
	if !validVolumeName.MatchString(name) {
		return volRecord{}, notFound("get %s: no such volume", name)
	}
	b, err := os.ReadFile(filepath.Join(e.volumeRoot(), name, "volume.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return volRecord{}, notFound("get %s: no such volume", name)
	}
	if err != nil {
		return volRecord{}, fmt.Errorf("reading volume %s: %w", name, err)
	}
	var v volRecord
	if err := json.Unmarshal(b, &v); err != nil || v.Name != name {
		return volRecord{}, fmt.Errorf("reading volume %s: its record is damaged", name)
	}
	return v, nil
}

// ensureVolume returns volume name, made (with an event) when it does not exist. Call with
// e.volMu held.
func (e *Engine) ensureVolume(name string, labels map[string]string, anonymous bool) (volRecord, error) {
	if v, err := e.getVolume(name); err == nil {
		return v, nil
	} else if !isNotFound(err) {
		return volRecord{}, err
	}
	v := volRecord{Name: name, Labels: labels, CreatedAt: time.Now().UTC().Truncate(time.Second), Anonymous: anonymous}
	dir := filepath.Join(e.volumeRoot(), name)
	if err := os.MkdirAll(filepath.Join(dir, "_data"), 0o755); err != nil {
		return volRecord{}, fmt.Errorf("creating volume %s: %w", name, err)
	}
	// The root stays the engine's: containers see only _data.
	os.Chmod(e.volumeRoot(), 0o700)
	b, _ := json.Marshal(v)
	if err := atomicfile.Write(filepath.Join(dir, "volume.json"), b, 0o600); err != nil {
		os.RemoveAll(dir)
		return volRecord{}, fmt.Errorf("creating volume %s: %w", name, err)
	}
	e.emit(events.VolumeEventType, events.ActionCreate, name, map[string]string{"driver": "local"})
	return v, nil
}

// listVolumes reads every volume, by name.
func (e *Engine) listVolumes() ([]volRecord, error) {
	ents, err := os.ReadDir(e.volumeRoot())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing volumes: %w", err)
	}
	var out []volRecord
	for _, d := range ents {
		if v, err := e.getVolume(d.Name()); err == nil {
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// volumeUsers are the engine's containers mounting each volume (by volume name), read from
// their mounts.json: a container being created counts as soon as its mounts are written.
func (e *Engine) volumeUsers() map[string][]string {
	users := map[string][]string{}
	dirs, _ := os.ReadDir(filepath.Join(e.cfg.StateDir, "containers"))
	for _, d := range dirs {
		ms, _ := readMounts(e.containerDir(d.Name()))
		for _, m := range ms {
			if m.Kind == kindVolume {
				users[m.Source] = append(users[m.Source], d.Name())
			}
		}
	}
	return users
}

// labelVolume+NAME is on the containerd container of each engine container mounting volume
// NAME: engines sharing VolumeDir (docker:host runs) see each other's users by it.
const labelVolume = "moatc.volume."

// sharedVolumeUsers are the containers of other engines in the namespace that mount volume
// name (those not in known). A failed listing counts as in use: nothing shared is removed
// on a guess.
func (e *Engine) sharedVolumeUsers(name string, known []string) []string {
	cs, err := e.cfg.Client.Containers(e.bg, fmt.Sprintf("labels.%q", labelVolume+name))
	if err != nil {
		return []string{"(containers of other runs could not be listed: " + err.Error() + ")"}
	}
	var ids []string
	for _, c := range cs {
		if !slices.Contains(known, c.ID()) {
			ids = append(ids, c.ID())
		}
	}
	return ids
}

// removeVolume removes a volume not in use. Call with e.volMu held.
func (e *Engine) removeVolume(name string) error {
	if _, err := e.getVolume(name); err != nil {
		return err
	}
	ids := e.volumeUsers()[name]
	if e.cfg.VolumeDir != "" {
		ids = append(ids, e.sharedVolumeUsers(name, ids)...)
	}
	if len(ids) > 0 {
		return conflict("remove %s: volume is in use - [%s]", name, strings.Join(ids, ", "))
	}
	dir := filepath.Join(e.volumeRoot(), name)
	// The record goes first: a volume half removed is gone from the lists.
	if err := os.Remove(filepath.Join(dir, "volume.json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing volume %s: %w", name, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing volume %s: %w", name, err)
	}
	e.emit(events.VolumeEventType, events.ActionDestroy, name, map[string]string{"driver": "local"})
	return nil
}

// removeAnonymousVolumes removes the anonymous volumes of a removed container (rm -v, --rm).
func (e *Engine) removeAnonymousVolumes(ms []ctrMount) {
	e.volMu.Lock()
	defer e.volMu.Unlock()
	for _, m := range ms {
		if m.Kind == kindVolume && m.Anonymous {
			if err := e.removeVolume(m.Source); err != nil && !isNotFound(err) {
				fmt.Fprintf(os.Stderr, "moatc engine: warning: removing volume %s: %v\n", m.Source, err)
			}
		}
	}
}

func isNotFound(err error) bool { return statusOf(err) == http.StatusNotFound }

// volumeCreate is POST /volumes/create: 201 with the volume (the existing one, if the name
// is taken, as Docker does).
func volumeCreate(e *Engine, w http.ResponseWriter, r *http.Request) error {
	var req volume.CreateRequest
	if err := decodeJSON(w, r, &req, true); err != nil {
		return err
	}
	if req.Driver != "" && req.Driver != "local" {
		return notImplemented("moatc does not support volume driver %s: its volumes are local directories", req.Driver)
	}
	if len(req.DriverOpts) > 0 {
		return forbidden("moatc refuses volume driver options (--opt): a local volume with options mounts a device or a remote share from the host")
	}
	if req.ClusterVolumeSpec != nil {
		return notImplemented("moatc does not support cluster volumes")
	}
	name := req.Name
	if name == "" {
		name = newID()
	} else if !validVolumeName.MatchString(name) {
		return invalid("create %s: %q includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed", name, name)
	}
	e.volMu.Lock()
	v, err := e.ensureVolume(name, req.Labels, false)
	e.volMu.Unlock()
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, e.volumeInfo(v))
}

// volumeFilters matches a volume against GET /volumes and prune's filters.
func volumeFilters(f filters, v volRecord, inUse bool) (bool, error) {
	for _, d := range f["dangling"] {
		switch strings.ToLower(d) {
		case "true", "1":
			if inUse {
				return false, nil
			}
		case "false", "0":
			if !inUse {
				return false, nil
			}
		default:
			return false, invalid("invalid filter 'dangling=%s'", d)
		}
	}
	ok := f.matchLabel(v.Labels) &&
		f.matchAny("name", func(s string) bool { return strings.Contains(v.Name, s) }) &&
		f.matchAny("driver", func(s string) bool { return s == "local" })
	return ok, nil
}

// volumeList is GET /volumes?filters=.
func volumeList(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), "name", "label", "dangling", "driver")
	if err != nil {
		return err
	}
	vs, err := e.listVolumes()
	if err != nil {
		return err
	}
	users := e.volumeUsers()
	out := volume.ListResponse{Volumes: []volume.Volume{}, Warnings: []string{}}
	for _, v := range vs {
		ok, err := volumeFilters(f, v, len(users[v.Name]) > 0)
		if err != nil {
			return err
		}
		if ok {
			out.Volumes = append(out.Volumes, e.volumeInfo(v))
		}
	}
	return writeJSON(w, http.StatusOK, out)
}

// volumeInspect is GET /volumes/{name}.
func volumeInspect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	v, err := e.getVolume(r.PathValue("name"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, e.volumeInfo(v))
}

// volumeRemove is DELETE /volumes/{name}?force=1: 204; 409 while a container uses it (force
// or not, as Docker); force makes a missing volume a success.
func volumeRemove(e *Engine, w http.ResponseWriter, r *http.Request) error {
	e.volMu.Lock()
	err := e.removeVolume(r.PathValue("name"))
	e.volMu.Unlock()
	if err != nil && !(isNotFound(err) && boolParam(r, "force")) {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// volumePrune is POST /volumes/prune?filters=: the volumes no container uses; only anonymous
// ones unless all=true (API 1.42 and later, as Docker).
func volumePrune(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), "label", "label!", "all")
	if err != nil {
		return err
	}
	all := versionLess(apiVersion(r), "1.42")
	for _, a := range f["all"] {
		switch strings.ToLower(a) {
		case "true", "1":
			all = true
		case "false", "0":
		default:
			return invalid("invalid filter 'all=%s'", a)
		}
	}
	e.volMu.Lock()
	defer e.volMu.Unlock()
	vs, err := e.listVolumes()
	if err != nil {
		return err
	}
	users := e.volumeUsers()
	rep := volume.PruneReport{VolumesDeleted: []string{}}
	for _, v := range vs {
		if len(users[v.Name]) > 0 || (!all && !v.Anonymous) || !f.matchLabel(v.Labels) || !f.matchNotLabel(v.Labels) {
			continue
		}
		size := dirSize(e.volumeData(v.Name))
		if err := e.removeVolume(v.Name); err != nil {
			continue
		}
		rep.VolumesDeleted = append(rep.VolumesDeleted, v.Name)
		rep.SpaceReclaimed += size
	}
	e.emit(events.VolumeEventType, events.ActionPrune, "", map[string]string{"reclaimed": fmt.Sprint(rep.SpaceReclaimed)})
	return writeJSON(w, http.StatusOK, rep)
}

// dirSize is the bytes of the regular files below dir (links not followed).
func dirSize(dir string) uint64 {
	var n uint64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += uint64(info.Size())
			}
		}
		return nil
	})
	return n
}
