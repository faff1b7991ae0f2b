package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// counts is what bad input must not change.
type counts struct{ runs, containers, snapshots int }

func snapshotCount(t *testing.T) counts {
	t.Helper()
	return counts{
		runs:       len(list(t)),
		containers: len(ctrRows(t, "containers", "ls")),
		snapshots:  len(ctrRows(t, "snapshots", "--snapshotter", "overlayfs", "ls")),
	}
}

func TestBadInput(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	mustRun(t, "run", "--no-sandbox", "-n", "taken", "--image", "busybox", ws, "--", "true")
	before := snapshotCount(t)
	for _, c := range []struct {
		name string
		env  []string
		args []string
		code int
		want string
	}{
		{"missing workspace", nil, []string{"run", "--no-sandbox", "/nonexistent/ws", "--", "true"}, 125, "does not exist"},
		{"malformed mount", nil, []string{"run", "--no-sandbox", "-m", "onlyhost", ws}, 2, "HOST:CONTAINER"},
		{"mount mode", nil, []string{"run", "--no-sandbox", "-m", ws + ":/x:rx", ws}, 2, "neither ro nor rw"},
		{"relative container path", nil, []string{"run", "--no-sandbox", "-m", ws + ":x", ws}, 2, "absolute"},
		{"missing mount source", nil, []string{"run", "--no-sandbox", "-m", "nothere:/x", ws}, 2, "does not exist"},
		{"malformed env", nil, []string{"run", "--no-sandbox", "-e", "=v", ws}, 2, "NAME=value"},
		{"unknown image", nil, []string{"run", "--no-sandbox", "--image", "nosuch/image:1", ws, "--", "true"}, 125, "moatc image pull nosuch/image:1"},
		{"bad image reference", nil, []string{"run", "--no-sandbox", "--image", "UPPER/Case", ws, "--", "true"}, 125, "not an image reference"},
		{"name in use", nil, []string{"run", "--no-sandbox", "-n", "taken", "--image", "busybox", ws, "--", "true"}, 125, "moatc destroy taken"},
		{"invalid name", nil, []string{"run", "--no-sandbox", "-n", "bad name", "--image", "busybox", ws, "--", "true"}, 125, "not a valid run name"},
		{"containerd not installed", []string{"MOATC_PREFIX=/nonexistent", "MOATC_HOME=" + filepath.Join(home, "other")}, []string{"run", "--no-sandbox", "--image", "busybox", ws, "--", "true"}, 125, "make setup"},
		{"containerd not answering", []string{"MOATC_CONTAINERD_ADDRESS=" + filepath.Join(home, "none.sock")}, []string{"run", "--no-sandbox", "--image", "busybox", ws, "--", "true"}, 125, "not answering"},
		{"unknown run", nil, []string{"status", "no-such-run"}, 125, "no such run"},
		{"command not found", nil, []string{"run", "--no-sandbox", "-n", "notfound", "--image", "busybox", ws, "--", "no-such-cmd"}, 127, "not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := moatcRun(t, opts{env: c.env}, c.args...)
			if r.code != c.code || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d (want %d), stderr %q (want it to contain %q)", r.code, c.code, r.stderr, c.want)
			}
		})
	}
	after := snapshotCount(t)
	// The not-found command is the one that got a record (failed, exit 127); nothing else did.
	before.runs++
	if after != before {
		t.Errorf("bad input left state behind: before %+v, after %+v", before, after)
	}
	if st := status(t, "notfound"); st.State != "failed" || st.ExitCode == nil || *st.ExitCode != 127 {
		t.Errorf("not-found run: %+v", st)
	}
}

func TestConfigErrorsNameFileLineKey(t *testing.T) {
	requireStack(t)
	for _, c := range []struct{ yaml, want string }{
		{"image: busybox\nimgae: typo\n", "moatc.yaml:2: imgae: unknown key"},
		{"image: busybox\ncontainer:\n  memory: lots\n", "moatc.yaml:3: container.memory"},
		{"interactive: maybe\n", "moatc.yaml:1: interactive: must be true or false"},
		{"mounts: /a:/b\n", "moatc.yaml:1: mounts: must be a list"},
		{"image: [\n", "moatc.yaml:"},
		{"image: busybox\ncommand: 42\n", "moatc.yaml:2: command: must be a list of strings or a string (got a number), like: command: [npm, test]"},
		{"container:\n  cpus: \"2\"\n", "moatc.yaml:2: container.cpus: must be a number, without quotes (got a string)"},
	} {
		ws := workspace(t)
		os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte(c.yaml), 0o644)
		r := moatcRun(t, opts{}, "run", "--no-sandbox", ws, "--", "true")
		if r.code != 125 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%q: exit %d stderr %q, want %q", c.yaml, r.code, r.stderr, c.want)
		}
	}
}

// moatc's own config.yaml is checked the same way, before anything starts.
func TestSettingsErrorsNameFileLine(t *testing.T) {
	requireStack(t)
	for _, c := range []struct{ yaml, want string }{
		{"namespace: moatc\naddress: [a]\n", "config.yaml:2: address: must be a containerd socket, a string (got a list)"},
		{"address: tcp://127.0.0.1:2375\n", "config.yaml:1: address: \"tcp://127.0.0.1:2375\" is not a containerd socket"},
		{"adress: /run/x.sock\n", "config.yaml:1: adress: unknown key"},
	} {
		h := t.TempDir()
		os.WriteFile(filepath.Join(h, "config.yaml"), []byte(c.yaml), 0o644)
		r := moatcRun(t, opts{env: []string{"MOATC_HOME=" + h}}, "list")
		if r.code != 125 || !strings.Contains(r.stderr, h+"/"+c.want) {
			t.Errorf("%q: exit %d stderr %q, want %q", c.yaml, r.code, r.stderr, c.want)
		}
		if _, err := os.Stat(filepath.Join(h, "runs")); err == nil {
			t.Errorf("%q: moatc made its state before refusing config.yaml", c.yaml)
		}
	}
}

func TestAmbiguousRunID(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	// 17 ids of 16 possible first digits: two must share one.
	byFirst := map[byte][]string{}
	for i := 0; i < 17; i++ {
		mustRun(t, "run", "--no-sandbox", "-n", fmt.Sprintf("amb-%d", i), "--image", "busybox", ws, "--", "true")
	}
	for _, r := range list(t) {
		byFirst[r.ID[0]] = append(byFirst[r.ID[0]], r.ID)
	}
	for first, ids := range byFirst {
		if len(ids) < 2 {
			continue
		}
		r := moatcRun(t, opts{}, "status", string(first))
		if r.code != 125 || !strings.Contains(r.stderr, "matches") || !strings.Contains(r.stderr, ids[0]) {
			t.Errorf("ambiguous prefix %c: exit %d %q", first, r.code, r.stderr)
		}
		return
	}
	t.Fatal("no two runs share a first digit")
}

func TestPullFromLocalRegistry(t *testing.T) {
	requireStack(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New()}
	go srv.Serve(l)
	defer srv.Close()
	host := l.Addr().String()

	// Push the busybox base image's layer to the registry as a new image.
	img := busyboxImage(t)
	ref, _ := name.ParseReference(host+"/test/pulled:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	p := mustRun(t, "image", "pull", host+"/test/pulled:v1")
	if !strings.Contains(p.stdout, host+"/test/pulled:v1") || !strings.Contains(p.stderr, "fetching") {
		t.Errorf("pull: stdout %q stderr %q", p.stdout, p.stderr)
	}
	if ls := mustRun(t, "image", "ls"); !strings.Contains(ls.stdout, host+"/test/pulled:v1") {
		t.Errorf("image ls lacks the pulled image: %s", ls.stdout)
	}
	ws := workspace(t)
	r := mustRun(t, "run", "--no-sandbox", "--image", host+"/test/pulled:v1", ws, "--", "echo", "from-registry")
	if r.stdout != "from-registry\n" {
		t.Errorf("run of pulled image: %q", r.stdout)
	}
	mustRun(t, "image", "rm", host+"/test/pulled:v1")
	if ls := mustRun(t, "image", "ls"); strings.Contains(ls.stdout, "pulled") {
		t.Errorf("image rm left it: %s", ls.stdout)
	}
}

// busyboxImage is the busybox base image's layer as a go-containerregistry image.
func busyboxImage(t *testing.T) v1.Image {
	t.Helper()
	layer, err := tarball.LayerFromFile(busyboxLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg.Config.Env = []string{"PATH=/bin"}
	cfg.Architecture, cfg.OS = "amd64", "linux"
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// busyboxLayer extracts the layer of the cached busybox OCI tar into a file.
func busyboxLayer(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	tarPath := filepath.Join(prefix, "images", "busybox.oci.tar")
	out, err := execOutput("tar", "-xf", tarPath, "-C", dir)
	if err != nil {
		t.Fatalf("extracting %s: %v %s", tarPath, err, out)
	}
	// The layer is the largest blob.
	var best string
	var size int64
	filepath.Walk(filepath.Join(dir, "blobs"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() && fi.Size() > size {
			best, size = p, fi.Size()
		}
		return nil
	})
	return best
}

// TestImportDockerArchive: a `docker save` tar (docker-archive) imports and runs, as the OCI
// layouts of the base images do.
func TestImportDockerArchive(t *testing.T) {
	requireStack(t)
	img := busyboxImage(t)
	tag, _ := name.NewTag("saved/busybox:archive")
	path := filepath.Join(t.TempDir(), "saved.tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		t.Fatal(err)
	}
	imp := mustRun(t, "image", "import", path)
	if !strings.Contains(imp.stdout, "docker.io/saved/busybox:archive") {
		t.Errorf("import printed %q", imp.stdout)
	}
	ws := workspace(t)
	if r := mustRun(t, "run", "--no-sandbox", "--image", "saved/busybox:archive", ws, "--", "echo", "from-archive"); r.stdout != "from-archive\n" {
		t.Errorf("run: %q", r.stdout)
	}
	mustRun(t, "image", "rm", "saved/busybox:archive")
	if r := moatcRun(t, opts{}, "image", "import", filepath.Join(t.TempDir(), "missing.tar")); r.code != 125 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("import of a missing file: %d %q", r.code, r.stderr)
	}
}

// --address takes the socket as a path or as a unix:// URL, and refuses anything else before
// touching containerd.
func TestAddressSpellings(t *testing.T) {
	requireStack(t)
	mustRun(t, "system", "start")
	sock := filepath.Join(home, "containerd", "containerd.sock")
	ws := workspace(t)
	mustRun(t, "run", "--no-sandbox", "-n", "addr-probe", "--image", "busybox", ws, "--", "true")
	for _, a := range []string{sock, "unix://" + sock} {
		r := moatcRun(t, opts{}, "--address", a, "list")
		if r.code != 0 || !strings.Contains(r.stdout, "addr-probe") {
			t.Errorf("--address %s list: exit %d\n%s%s", a, r.code, r.stdout, r.stderr)
		}
		r = moatcRun(t, opts{env: []string{"MOATC_CONTAINERD_ADDRESS=" + a}}, "list", "--json")
		if r.code != 0 || !strings.Contains(r.stdout, "addr-probe") {
			t.Errorf("MOATC_CONTAINERD_ADDRESS=%s list: exit %d\n%s%s", a, r.code, r.stdout, r.stderr)
		}
	}
	for _, a := range []string{"tcp://127.0.0.1:2375", "containerd.sock", "unix://containerd.sock", "unix:" + sock} {
		r := moatcRun(t, opts{}, "--address", a, "list")
		if r.code != 2 || !strings.Contains(r.stderr, "is not a containerd socket") || !strings.Contains(r.stderr, "unix:///run/containerd/containerd.sock") {
			t.Errorf("--address %s: exit %d (want 2), stderr %q", a, r.code, r.stderr)
		}
	}
	mustRun(t, "destroy", "addr-probe")
}

// -i passes stdin whatever it is: a terminal, /dev/null or a pipe. Without a terminal there
// is no TTY, and the run still works.
func TestInteractiveWithoutTerminal(t *testing.T) {
	requireStack(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			ws := workspace(t)
			// opts without stdin: exec gives the command /dev/null.
			r := moatcRun(t, opts{}, busyboxRun(rt, []string{"-i"}, ws, "true")...)
			if r.code != 0 {
				t.Errorf("run -i -- true </dev/null: exit %d\n%s", r.code, r.stderr)
			}
			r = moatcRun(t, opts{}, busyboxRun(rt, []string{"-i"}, ws, "sh", "-c", "cat; test -t 0 || echo no-tty")...)
			if r.code != 0 || r.stdout != "no-tty\n" {
				t.Errorf("run -i -- cat </dev/null: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
			}
			r = moatcRun(t, opts{stdin: "from the pipe\nline two\n"}, busyboxRun(rt, []string{"-i"}, ws, "sh", "-c", "cat; test -t 0 || echo no-tty")...)
			if r.code != 0 || r.stdout != "from the pipe\nline two\nno-tty\n" {
				t.Errorf("echo ... | run -i -- cat: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
			}
			// Without -i the pipe is not passed on.
			r = moatcRun(t, opts{stdin: "not for you\n"}, busyboxRun(rt, nil, ws, "cat")...)
			if r.code != 0 || r.stdout != "" {
				t.Errorf("run -- cat without -i: exit %d stdout %q\n%s", r.code, r.stdout, r.stderr)
			}
		})
	}
}

// -t without a terminal must not start anything and must say why.
func TestTTYWithoutTerminal(t *testing.T) {
	requireStack(t)
	ws := workspace(t)
	before := len(list(t))
	r := moatcRun(t, opts{stdin: "x\n"}, busyboxRun("runc", []string{"-t"}, ws, "true")...)
	if r.code != 125 || !strings.Contains(r.stderr, "the input device is not a TTY") || !strings.Contains(r.stderr, "-t") {
		t.Errorf("run -t without a terminal: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := moatcRun(t, opts{}, busyboxRun("runc", []string{"-d", "-t"}, ws, "true")...); r.code != 2 {
		t.Errorf("run -d -t: exit %d, stderr %q", r.code, r.stderr)
	}
	if after := len(list(t)); after != before {
		t.Errorf("run -t without a terminal left %d run records", after-before)
	}
	// With a terminal (script(1) gives moatc one): -it and -t give the command a TTY, and
	// -t=false takes it away even with -i.
	script := "r=; test -t 0 && r=tty0; test -t 1 && r=\"$r tty1\"; echo \"tty:${r:-none}\"\n"
	if err := os.WriteFile(filepath.Join(ws, "tty.sh"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	for flags, want := range map[string]string{"-it": "tty:tty0 tty1", "-t": "tty:tty0 tty1", "-i -t=false": "tty:none"} {
		cmd := moatc + " run --no-sandbox " + flags + " --image busybox " + ws + " -- sh /workspace/tty.sh"
		out, err := exec.Command("sh", "-c", "sleep 2 | script -eqc '"+cmd+"' /dev/null").CombinedOutput()
		got := ""
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(strings.TrimPrefix(l, "^D"), "tty:") {
				got = strings.TrimSpace(strings.TrimPrefix(l, "^D"))
			}
		}
		if err != nil || got != want {
			t.Errorf("run %s with a terminal: %v, output %q, want %q", flags, err, out, want)
		}
	}
}
