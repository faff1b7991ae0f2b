package builder

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/errdefs"
	"github.com/distribution/reference"
	"github.com/moatc/moatc/deps"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	bkerrdefs "github.com/moby/buildkit/solver/errdefs"
	"github.com/moby/buildkit/util/progress/progressui"
	digest "github.com/opencontainers/go-digest"
	"github.com/tonistiigi/fsutil"
	"golang.org/x/sync/errgroup"
)

// Progress modes.
const (
	ModeAuto  = "auto"  // BuildKit's live display when Progress is a terminal, plain lines otherwise
	ModeTTY   = "tty"   // the live display; an error when Progress is not a terminal
	ModePlain = "plain" // one line per event
	ModeQuiet = "quiet" // nothing (the log file, if any, still gets everything)
)

// Request is one image build.
type Request struct {
	Dockerfile []byte    // the recipe (deps.Plan.Dockerfile); it needs no build context
	Tag        string    // e.g. moatc/run:<hash>; stored in full, docker.io/moatc/run:<hash>
	Progress   io.Writer // where progress goes, e.g. os.Stderr; nil means none
	Mode       string    // ModeAuto (""), ModeTTY, ModePlain or ModeQuiet
	LogPath    string    // file that gets the full build log (every step's output); "" for none
	Rebuild    bool      // build even when the image exists (layers BuildKit has cached are reused)
	// CACerts is a PEM bundle the build's downloads trust, passed as the BuildKit secret
	// deps.CASecretID (never stored in the image). "" means the host's bundle, HostCACerts,
	// when it exists: a build then trusts what the host trusts, including the CA of a
	// TLS-intercepting proxy in front of the registries. "none" passes nothing.
	CACerts string
}

// SandboxHostname is the hostname of RUN steps. Setting one makes BuildKit give every step a
// network namespace of its own (see Daemon.config).
const SandboxHostname = "moatc-build"

// HostCACerts is Debian's system CA bundle, the default of Request.CACerts.
const HostCACerts = "/etc/ssl/certs/ca-certificates.crt"

// StepError is a failed build: which step, its last lines of output, and where the rest is.
type StepError struct {
	Image   string   // the image being built
	Step    string   // BuildKit's name of the failed step, e.g. `[5/9] RUN sh /usr/local/libexec/moatc-install ...`
	Line    int      // the step's first line in the Dockerfile; 0 when unknown
	Comment string   // the Dockerfile comment just above that line (moatc's generator names each step there)
	Output  []string // the step's last lines of output
	LogPath string   // the full build log, when one was kept
	Hint    string   // how to fix it, when known
	Err     error    // BuildKit's error
}

func (e *StepError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "building %s failed", e.Image)
	if e.Comment != "" {
		fmt.Fprintf(&b, " at %q", e.Comment)
	}
	if e.Line > 0 {
		fmt.Fprintf(&b, " (Dockerfile line %d)", e.Line)
	}
	if e.Step != "" {
		fmt.Fprintf(&b, ", step %s", shorten(reMountFlag.ReplaceAllString(e.Step, ""), 160))
	}
	fmt.Fprintf(&b, ": %s", summary(e.Err))
	if len(e.Output) > 0 {
		b.WriteString("\nlast output of the step:")
		for _, l := range e.Output {
			b.WriteString("\n  " + l)
		}
	}
	if e.Hint != "" {
		b.WriteString("\n" + e.Hint)
	}
	if e.LogPath != "" {
		b.WriteString("\nfull build log: " + e.LogPath)
	}
	return b.String()
}

func (e *StepError) Unwrap() error { return e.Err }

// ImageName is the full name a tag is stored under in containerd: moatc/run:x becomes
// docker.io/moatc/run:x, as moatc's image lookups expect.
func ImageName(tag string) (string, error) {
	n, err := reference.ParseDockerRef(tag)
	if err != nil {
		return "", fmt.Errorf("image tag %q: %w", tag, err)
	}
	return n.String(), nil
}

// Exists reports whether the image is in containerd's store in the daemon's namespace.
func Exists(ctx context.Context, d *Daemon, tag string) (bool, error) {
	name, err := ImageName(tag)
	if err != nil {
		return false, err
	}
	c, err := containerd.New(strings.TrimPrefix(d.ContainerdAddress, "unix://"),
		containerd.WithDefaultNamespace(d.Namespace), containerd.WithTimeout(10*time.Second))
	if err != nil {
		return false, fmt.Errorf("connecting to containerd on %s: %w", d.ContainerdAddress, err)
	}
	defer c.Close()
	_, err = c.ImageService().Get(ctx, name)
	switch {
	case errdefs.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("looking up image %s: %w", name, err)
	}
	return true, nil
}

// Build builds req.Dockerfile into containerd's store as req.Tag, unpacked for overlayfs, and
// returns the image's full name. An image that exists already is not built again unless
// req.Rebuild is set. buildkitd is started if it is not running.
func Build(ctx context.Context, d *Daemon, req Request) (string, error) {
	name, mode, err := checkRequest(req)
	if err != nil {
		return "", err
	}
	logf, err := openLog(req.LogPath)
	if err != nil {
		return "", err
	}
	if logf != nil {
		defer logf.Close()
	}
	say := func(format string, a ...any) {
		msg := fmt.Sprintf(format, a...)
		if logf != nil {
			fmt.Fprintln(logf, msg)
		}
		if req.Progress != nil && mode != ModeQuiet {
			fmt.Fprintln(req.Progress, msg)
		}
	}

	if !req.Rebuild {
		ok, err := Exists(ctx, d, name)
		if err != nil {
			return "", err
		}
		if ok {
			say("moatc: image %s exists; nothing to build", name)
			return name, nil
		}
	}
	// Marked live until it returns: Sweep leaves buildkitd and its leases alone meanwhile.
	end, err := d.Hold()
	if err != nil {
		return "", err
	}
	defer end()
	if err := d.Start(ctx); err != nil {
		return "", err
	}
	c, err := bkclient.New(ctx, d.Address())
	if err != nil {
		return "", fmt.Errorf("connecting to buildkitd on %s: %w", d.Address(), err)
	}
	defer c.Close()

	// Under the home, not /tmp: a build killed here leaves it where Sweep finds it.
	dir, err := os.MkdirTemp(d.Dir, contextDirPrefix)
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	opt, err := solveOpt(dir, name, req)
	if err != nil {
		return "", err
	}
	displays, err := newDisplays(req, mode, logf)
	if err != nil {
		return "", err
	}
	tr := newTracker()
	say("moatc: building %s", name)
	start := time.Now()
	solveErr, dispErr := solve(ctx, c, opt, tr, displays)
	if solveErr != nil {
		err := tr.stepError(solveErr, req.Dockerfile)
		err.Image, err.LogPath = name, req.LogPath
		if logf != nil {
			fmt.Fprintf(logf, "moatc: %v\n", err)
		}
		return "", err
	}
	if dispErr != nil {
		return "", fmt.Errorf("progress display: %w", dispErr)
	}
	say("moatc: built %s in %.1fs", name, time.Since(start).Seconds())
	return name, nil
}

// checkRequest checks req and returns the image name and the progress mode to use.
func checkRequest(req Request) (string, string, error) {
	name, err := ImageName(req.Tag)
	if err != nil {
		return "", "", err
	}
	if len(req.Dockerfile) == 0 {
		return "", "", errors.New("builder: empty Dockerfile")
	}
	mode := req.Mode
	switch mode {
	case "":
		mode = ModeAuto
	case ModeAuto, ModeTTY, ModePlain, ModeQuiet:
	default:
		return "", "", fmt.Errorf("builder: progress mode %q (want auto, tty, plain or quiet)", req.Mode)
	}
	return name, mode, nil
}

// openLog opens the full build log, truncated; nil without a path.
func openLog(path string) (*os.File, error) {
	if path == "" {
		return nil, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("build log: %w", err)
	}
	return f, nil
}

// solveOpt writes the Dockerfile into dir (with an empty context beside it) and returns the
// solve of it into the image name.
func solveOpt(dir, name string, req Request) (bkclient.SolveOpt, error) {
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), req.Dockerfile, 0o600); err != nil {
		return bkclient.SolveOpt{}, err
	}
	if err := os.Mkdir(filepath.Join(dir, "context"), 0o700); err != nil {
		return bkclient.SolveOpt{}, err
	}
	dfFS, err := fsutil.NewFS(dir)
	if err != nil {
		return bkclient.SolveOpt{}, err
	}
	ctxFS, err := fsutil.NewFS(filepath.Join(dir, "context")) // empty: the recipe copies nothing in
	if err != nil {
		return bkclient.SolveOpt{}, err
	}
	secretMap, err := secrets(req.CACerts)
	if err != nil {
		return bkclient.SolveOpt{}, err
	}
	return bkclient.SolveOpt{
		Session:       []session.Attachable{secretsprovider.FromMap(secretMap)},
		Frontend:      "dockerfile.v0",
		FrontendAttrs: map[string]string{"filename": "Dockerfile", "build-arg:BUILDKIT_SANDBOX_HOSTNAME": SandboxHostname},
		LocalMounts:   map[string]fsutil.FS{"context": ctxFS, "dockerfile": dfFS},
		Exports: []bkclient.ExportEntry{{
			Type: bkclient.ExporterImage,
			// unpack: the layers go into containerd's overlayfs snapshotter now, so the first
			// run does not pay for it.
			Attrs: map[string]string{"name": name, "unpack": "true"},
		}},
	}, nil
}

// secrets returns the build's secrets. The CA bundle travels as a secret: not in the image,
// not in any cache key.
func secrets(ca string) (map[string][]byte, error) {
	secretMap := map[string][]byte{}
	switch ca {
	case "none":
	case "":
		if b, err := os.ReadFile(HostCACerts); err == nil {
			secretMap[deps.CASecretID] = b
		}
	default:
		b, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("CA bundle for the build: %w", err)
		}
		secretMap[deps.CASecretID] = b
	}
	return secretMap, nil
}

// newDisplays returns the progress displays: the caller's (unless quiet) and the log file's.
func newDisplays(req Request, mode string, logf *os.File) ([]progressui.Display, error) {
	var displays []progressui.Display
	if req.Progress != nil && mode != ModeQuiet {
		disp, err := progressui.NewDisplay(req.Progress, progressui.DisplayMode(mode))
		if err != nil {
			return nil, fmt.Errorf("progress display: %w", err)
		}
		displays = append(displays, disp)
	}
	if logf != nil {
		disp, err := progressui.NewDisplay(logf, progressui.PlainMode)
		if err != nil {
			return nil, err
		}
		displays = append(displays, disp)
	}
	return displays, nil
}

// solve runs the build. One status stream, several readers: the step tracker and each display.
func solve(ctx context.Context, c *bkclient.Client, opt bkclient.SolveOpt, tr *tracker, displays []progressui.Display) (solveErr, dispErr error) {
	statusCh := make(chan *bkclient.SolveStatus)
	outs := make([]chan *bkclient.SolveStatus, len(displays))
	for k := range outs {
		outs[k] = make(chan *bkclient.SolveStatus, 64)
	}
	var eg errgroup.Group
	eg.Go(func() error {
		defer func() {
			for _, o := range outs {
				close(o)
			}
		}()
		for s := range statusCh {
			tr.update(s)
			for _, o := range outs {
				o <- s
			}
		}
		return nil
	})
	for k, disp := range displays {
		eg.Go(func() error {
			_, err := disp.UpdateFrom(context.Background(), outs[k])
			return err
		})
	}
	_, solveErr = c.Solve(ctx, nil, opt, statusCh) // closes statusCh
	return solveErr, eg.Wait()
}

// tracker keeps each step's name, error and last lines of output.
type tracker struct {
	mu      sync.Mutex
	names   map[digest.Digest]string
	errs    map[digest.Digest]string
	failed  []digest.Digest
	lines   map[digest.Digest][]string
	partial map[digest.Digest][]byte
}

const keepLines = 25

func newTracker() *tracker {
	return &tracker{names: map[digest.Digest]string{}, errs: map[digest.Digest]string{},
		lines: map[digest.Digest][]string{}, partial: map[digest.Digest][]byte{}}
}

func (t *tracker) update(s *bkclient.SolveStatus) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, v := range s.Vertexes {
		t.names[v.Digest] = v.Name
		if v.Error != "" && t.errs[v.Digest] == "" {
			t.errs[v.Digest] = v.Error
			t.failed = append(t.failed, v.Digest)
		}
	}
	for _, l := range s.Logs {
		buf := append(t.partial[l.Vertex], l.Data...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			t.addLine(l.Vertex, string(buf[:i]))
			buf = buf[i+1:]
		}
		t.partial[l.Vertex] = append([]byte(nil), buf...)
	}
}

func (t *tracker) addLine(v digest.Digest, line string) {
	line = strings.TrimRight(line, "\r")
	ls := append(t.lines[v], line)
	if len(ls) > keepLines {
		ls = ls[len(ls)-keepLines:]
	}
	t.lines[v] = ls
}

// stepError names the step that failed: the first one whose error is its own (steps cancelled
// because of it report "canceled").
func (t *tracker) stepError(err error, dockerfile []byte) *StepError {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := &StepError{Err: err}
	failed := t.failed
	for k, d := range t.failed {
		if !strings.Contains(t.errs[d], "canceled") {
			failed = t.failed[k:]
			break
		}
	}
	if len(failed) > 0 {
		d := failed[0]
		e.Step = t.names[d]
		if p := t.partial[d]; len(p) > 0 {
			t.addLine(d, string(p))
			t.partial[d] = nil
		}
		e.Output = t.lines[d]
	}
	for _, src := range bkerrdefs.Sources(err) {
		for _, r := range src.Ranges {
			if r.Start != nil && r.Start.Line > 0 {
				e.Line = int(r.Start.Line)
				break
			}
		}
		if e.Line > 0 {
			break
		}
	}
	if e.Line > 0 {
		e.Comment = commentAbove(dockerfile, e.Line)
	}
	if base, ok := strings.CutPrefix(e.Step, "[internal] load metadata for "); ok {
		e.Hint = fmt.Sprintf("the base image %s is not in containerd's store and could not be pulled: pull it where a registry is reachable (moatc image pull %s), import a tar (moatc image import FILE), or make the local base images (make base-images)", base, base)
	}
	return e
}

// commentAbove returns the comment block's last line above Dockerfile line n (1-based).
func commentAbove(dockerfile []byte, n int) string {
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	for i := n - 2; i >= 0 && i < len(lines); i-- {
		l := strings.TrimSpace(lines[i])
		if strings.HasPrefix(l, "#") {
			return strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(l, "#"), "."))
		}
		if l != "" {
			return ""
		}
	}
	return ""
}

var (
	reExit      = regexp.MustCompile(`exit code: [0-9]+`)
	reMountFlag = regexp.MustCompile(`--mount=\S+\s*`) // RUN's mounts say nothing about what failed
)

// summary shortens BuildKit's error: "process "<the whole command>" did not complete
// successfully: exit code: 1" says no more than "exit code: 1" once the step is named.
func summary(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if strings.Contains(s, "did not complete successfully") {
		if m := reExit.FindString(s); m != "" {
			return "the command failed with " + m
		}
	}
	return shorten(s, 400)
}

func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
