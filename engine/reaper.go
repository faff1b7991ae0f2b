package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/distribution/reference"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/snapshot"
)

// ReaperRepo is the image testcontainers starts as its reaper (testcontainers/ryuk:0.14.0 for
// testcontainers-go v0.45.0). Its real image is not reachable from here, so the engine makes
// one of its own under that name when a client asks for it: a single layer holding
// moatc-reaper (cmd/moatc-reaper, which speaks ryuk's protocol) as /bin/ryuk. It is moatc's
// image, not Docker's or testcontainers'.
const ReaperRepo = "docker.io/testcontainers/ryuk"

// ReaperExeName is the reaper's binary, looked for next to moatc's (see Config.ReaperExe).
const ReaperExeName = "moatc-reaper"

// reaperExe is the static reaper binary the image is made from, "" when there is none.
func (e *Engine) reaperExe() string {
	exe := e.cfg.ReaperExe
	if exe == "" && e.cfg.LoggerExe != "" {
		exe = filepath.Join(filepath.Dir(e.cfg.LoggerExe), ReaperExeName)
	}
	if fi, err := os.Stat(exe); exe == "" || err != nil || !fi.Mode().IsRegular() {
		return ""
	}
	return exe
}

// isReaperRef tells whether ref names a tag of ReaperRepo, returning its full name.
func isReaperRef(ref string) (string, bool) {
	n, err := reference.ParseDockerRef(ref)
	if err != nil {
		return "", false
	}
	t, ok := n.(reference.NamedTagged)
	if !ok || n.Name() != ReaperRepo {
		return "", false
	}
	return t.String(), true
}

// ensureReaperImage writes the reaper image under ref into the engine's namespace when ref
// names ReaperRepo and it is missing. It reports whether ref is now there because of it.
func (e *Engine) ensureReaperImage(ctx context.Context, ref string) (bool, error) {
	name, ok := isReaperRef(ref)
	if !ok {
		return false, nil
	}
	exe := e.reaperExe()
	if exe == "" {
		return false, nil
	}
	e.reaperMu.Lock()
	defer e.reaperMu.Unlock()
	if _, err := e.cfg.Client.Image(ctx, name, e.cfg.Snapshotter); err == nil {
		return true, nil // made by a racing request
	}
	root, err := os.MkdirTemp(e.cfg.StateDir, "reaper-rootfs-")
	if err != nil {
		return false, fmt.Errorf("making the reaper image: %w", err)
	}
	defer os.RemoveAll(root)
	if err := copyReaper(exe, filepath.Join(root, "bin", "ryuk")); err != nil {
		return false, fmt.Errorf("making the reaper image: %w", err)
	}
	img := snapshot.Image{Name: name, Rootfs: root, Cmd: []string{"/bin/ryuk"}}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(snapshot.WriteOCI(pw, img)) }()
	_, err = e.cfg.Client.Import(ctx, pr, e.cfg.Snapshotter, "")
	pr.CloseWithError(io.EOF) // let the writer end if the import stopped early
	if err != nil {
		return false, fmt.Errorf("making the reaper image %s: %w", ctrd.ShortName(name), err)
	}
	return true, nil
}

func copyReaper(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// pullReaperImage answers a pull (POST /images/create) of the reaper's name by making the
// image instead of fetching it: the registry's would not be moatc's. It reports whether it
// answered.
func (e *Engine) pullReaperImage(w http.ResponseWriter, r *http.Request, named reference.Named) (bool, error) {
	if _, ok := isReaperRef(named.String()); !ok || e.reaperExe() == "" {
		return false, nil
	}
	made, err := e.ensureReaperImage(r.Context(), named.String())
	if err != nil || !made {
		return made, err
	}
	img, err := e.cfg.Client.Image(r.Context(), named.String(), e.cfg.Snapshotter)
	if err != nil {
		return true, err
	}
	name := reference.FamiliarString(named)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for _, m := range []streamMessage{
		{Status: "moatc makes " + name + " from moatc-reaper (moatc's own reaper, not the registry's image)"},
		{Status: "Digest: " + img.Target().Digest.String()},
		{Status: "Status: Image is up to date for " + name},
	} {
		enc.Encode(m)
	}
	return true, nil
}
