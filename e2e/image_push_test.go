package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestImagePush: `moatc image push` sends an image of the store to a registry, where
// go-containerregistry reads it back whole under the digest moatc printed; credentials come
// from the docker config; what goes wrong says what to do.
func TestImagePush(t *testing.T) {
	requireStack(t)
	reg := newTestRegistry(t, "127.0.0.1:0", nil)
	noCreds := dockerConfig(t, nil)
	busybox := storeDigest(t, "docker.io/library/busybox:latest")

	t.Run("json", func(t *testing.T) {
		dest := reg + "/e2e/busybox:v1"
		r := pushRun(t, noCreds, "image", "push", "--json", "busybox", dest)
		if r.code != 0 {
			t.Fatalf("push: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		var got struct{ Source, Destination, Digest string }
		decodeJSON(t, r.stdout, &got)
		if got.Source != "docker.io/library/busybox:latest" || got.Destination != dest || got.Digest != busybox {
			t.Errorf("push --json: %+v, want source docker.io/library/busybox:latest, destination %s, digest %s", got, dest, busybox)
		}
		if !strings.Contains(r.stderr, "pushing manifest") || !strings.Contains(r.stderr, "pushing layer") {
			t.Errorf("no progress on stderr: %q", r.stderr)
		}
		checkInRegistry(t, dest, got.Digest, nil)
	})

	t.Run("plain output, blobs already there, DEST defaults to SRC", func(t *testing.T) {
		dest := reg + "/e2e/busybox:v2"
		r := pushRun(t, noCreds, "image", "push", "busybox", dest)
		if r.code != 0 || r.stdout != "pushed "+dest+"@"+busybox+"\n" {
			t.Fatalf("push: exit %d, stdout %q (want %q)\n%s", r.code, r.stdout, "pushed "+dest+"@"+busybox, r.stderr)
		}
		checkInRegistry(t, dest, busybox, nil)
		// An image named for the registry goes there without DEST.
		mustRun(t, "image", "pull", dest)
		t.Cleanup(func() { moatcRun(t, opts{}, "image", "rm", dest) })
		own := reg + "/e2e/busybox:v2"
		r = pushRun(t, noCreds, "image", "push", "-q", own)
		if r.code != 0 || r.stdout != "pushed "+own+"@"+busybox+"\n" || strings.Contains(r.stderr, "pushing") {
			t.Errorf("push -q of its own name: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("index with a platform not in the store", func(t *testing.T) {
		// A two-platform image, pulled: the store holds the index and the host's platform only;
		// and not even the host's layer blob, whose snapshot busybox's unpack made already.
		host, idx := twoPlatforms(t)
		multi := reg + "/e2e/multi:v1"
		ref, _ := name.ParseReference(multi, name.Insecure)
		if err := remote.WriteIndex(ref, idx, remote.WithContext(shortContext(t))); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "image", "pull", multi)
		t.Cleanup(func() { moatcRun(t, opts{}, "image", "rm", multi) })

		dest := reg + "/e2e/multi-host:v1"
		r := pushRun(t, noCreds, "image", "push", "--json", multi, dest)
		if r.code != 0 {
			t.Fatalf("push: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		var got struct{ Digest string }
		decodeJSON(t, r.stdout, &got)
		want, _ := host.Digest()
		if got.Digest != want.String() {
			t.Errorf("pushed %s, want the host's manifest %s", got.Digest, want)
		}
		if !strings.Contains(r.stderr, "linux/"+runtime.GOARCH+" manifest alone") {
			t.Errorf("stderr does not say only the host's platform went: %q", r.stderr)
		}
		if !strings.Contains(r.stderr, "fetching layer") {
			t.Errorf("stderr does not say the missing layer was fetched first: %q", r.stderr)
		}
		if d := checkInRegistry(t, dest, got.Digest, nil); !d.MediaType.IsImage() {
			t.Errorf("pushed a %s, want a manifest", d.MediaType)
		}
	})

	t.Run("index whole in the store", func(t *testing.T) {
		// An index imported from an OCI layout, every blob of it in the store: the index goes
		// as it is. One platform: an import keeps the host platform's content alone (the
		// other's blobs go at containerd's next garbage collection).
		host, _ := twoPlatforms(t)
		idx := mutate.AppendManifests(empty.Index,
			mutate.IndexAddendum{Add: host, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}})
		whole := "e2e.test/push/whole:v1"
		dir := t.TempDir()
		lp, err := layout.Write(filepath.Join(dir, "layout"), empty.Index)
		if err != nil {
			t.Fatal(err)
		}
		if err := lp.AppendIndex(idx, layout.WithAnnotations(map[string]string{"io.containerd.image.name": whole})); err != nil {
			t.Fatal(err)
		}
		tarball := filepath.Join(dir, "whole.tar")
		if out, err := execOutput("tar", "-C", filepath.Join(dir, "layout"), "-cf", tarball, "."); err != nil {
			t.Fatalf("tar: %v %s", err, out)
		}
		mustRun(t, "image", "import", tarball)
		t.Cleanup(func() { moatcRun(t, opts{}, "image", "rm", whole) })

		dest := reg + "/e2e/whole:v1"
		r := pushRun(t, noCreds, "image", "push", whole, dest)
		want, _ := idx.Digest()
		if r.code != 0 || r.stdout != "pushed "+dest+"@"+want.String()+"\n" {
			t.Fatalf("push: exit %d, stdout %q (want the index %s)\n%s", r.code, r.stdout, want, r.stderr)
		}
		if strings.Contains(r.stderr, "alone") || strings.Contains(r.stderr, "fetching") {
			t.Errorf("stderr: %q", r.stderr)
		}
		if d := checkInRegistry(t, dest, want.String(), nil); !d.MediaType.IsIndex() {
			t.Errorf("pushed a %s, want an index", d.MediaType)
		}
	})

	t.Run("basic auth from the docker config", func(t *testing.T) {
		private := newTestRegistry(t, "127.0.0.1:0", &authn.Basic{Username: "moat", Password: "s3cret"})
		dest := private + "/e2e/private:v1"
		r := pushRun(t, noCreds, "image", "push", "busybox", dest)
		if r.code != 125 || !strings.Contains(r.stderr, "docker login "+private) || !strings.Contains(r.stderr, "holds none") {
			t.Errorf("push without credentials: exit %d (want 125), stderr %q (want docker login %s)", r.code, r.stderr, private)
		}
		wrong := dockerConfig(t, map[string]string{private: "moat:wrong"})
		r = pushRun(t, wrong, "image", "push", "busybox", dest)
		if r.code != 125 || !strings.Contains(r.stderr, "refused the credentials") || !strings.Contains(r.stderr, "docker login "+private) {
			t.Errorf("push with a wrong password: exit %d (want 125), stderr %q", r.code, r.stderr)
		}
		right := dockerConfig(t, map[string]string{private: "moat:s3cret"})
		r = pushRun(t, right, "image", "push", "busybox", dest)
		if r.code != 0 || r.stdout != "pushed "+dest+"@"+busybox+"\n" {
			t.Fatalf("push with credentials: exit %d, stdout %q\n%s", r.code, r.stdout, r.stderr)
		}
		checkInRegistry(t, dest, busybox, &authn.Basic{Username: "moat", Password: "s3cret"})
	})

	t.Run("plain HTTP off loopback only with --insecure-registry", func(t *testing.T) {
		ip := nonLoopbackIP(t)
		other := newTestRegistry(t, net.JoinHostPort(ip, "0"), nil)
		dest := other + "/e2e/insecure:v1"
		r := pushRun(t, noCreds, "image", "push", "busybox", dest)
		if r.code != 125 || !strings.Contains(r.stderr, "--insecure-registry "+other) {
			t.Errorf("push over HTTPS to a plain-HTTP registry: exit %d (want 125), stderr %q", r.code, r.stderr)
		}
		for _, flag := range []string{other, ip} { // HOST:PORT, and HOST for any port
			r = pushRun(t, noCreds, "image", "push", "--insecure-registry", flag, "busybox", dest)
			if r.code != 0 || r.stdout != "pushed "+dest+"@"+busybox+"\n" {
				t.Fatalf("push --insecure-registry %s: exit %d, stdout %q\n%s", flag, r.code, r.stdout, r.stderr)
			}
		}
		checkInRegistry(t, dest, busybox, nil)
	})

	t.Run("errors", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gone := l.Addr().String()
		l.Close()
		for _, c := range []struct {
			name string
			args []string
			code int
			want []string
		}{
			{"unknown SRC", []string{"nosuch/image:1", reg + "/e2e/nosuch:1"}, 125, []string{"no image nosuch/image:1 in moatc's store", "moatc image ls"}},
			{"registry unreachable", []string{"busybox", gone + "/e2e/busybox:v1"}, 125, []string{"registry " + gone + " is unreachable"}},
			{"digest as DEST", []string{"busybox", reg + "/e2e/busybox@" + busybox}, 125, []string{"give a tag"}},
			{"no SRC", nil, 2, []string{"image push needs SRC"}},
			{"insecure registry with a scheme", []string{"--insecure-registry", "http://" + reg, "busybox"}, 2, []string{"HOST or HOST:PORT"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				r := pushRun(t, noCreds, append([]string{"image", "push"}, c.args...)...)
				for _, w := range c.want {
					if r.code != c.code || !strings.Contains(r.stderr, w) {
						t.Errorf("exit %d (want %d), stderr %q (want it to contain %q)", r.code, c.code, r.stderr, w)
					}
				}
				if r.stdout != "" {
					t.Errorf("stdout %q", r.stdout)
				}
			})
		}
	})
}

// twoPlatforms is an index of busybox's layer for the host's platform (host) and a random
// image for another.
func twoPlatforms(t *testing.T) (host v1.Image, idx v1.ImageIndex) {
	t.Helper()
	host = busyboxImage(t)
	cfg, _ := host.ConfigFile()
	cfg.Architecture = runtime.GOARCH
	host, err := mutate.ConfigFile(host, cfg)
	if err != nil {
		t.Fatal(err)
	}
	other, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	otherArch := "s390x"
	if runtime.GOARCH == otherArch {
		otherArch = "arm64"
	}
	idx = mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: host, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}}},
		mutate.IndexAddendum{Add: other, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: otherArch}}})
	return host, idx
}

// newTestRegistry serves an in-memory registry on addr over plain HTTP, asking for basic
// credentials when auth is set, and returns its HOST:PORT.
func newTestRegistry(t *testing.T, addr string, auth *authn.Basic) string {
	t.Helper()
	var h http.Handler = registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	if auth != nil {
		inner := h
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != auth.Username || p != auth.Password {
				w.Header().Set("WWW-Authenticate", `Basic realm="moatc-e2e"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
				return
			}
			inner.ServeHTTP(w, r)
		})
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	return l.Addr().String()
}

// dockerConfig makes a DOCKER_CONFIG directory whose config.json holds auths, HOST to
// user:password, and returns the environment that points moatc at it.
func dockerConfig(t *testing.T, auths map[string]string) []string {
	t.Helper()
	dir := t.TempDir()
	type entry struct {
		Auth string `json:"auth"`
	}
	cfg := struct {
		Auths map[string]entry `json:"auths"`
	}{Auths: map[string]entry{}}
	for host, cred := range auths {
		cfg.Auths[host] = entry{Auth: base64.StdEncoding.EncodeToString([]byte(cred))}
	}
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return []string{"DOCKER_CONFIG=" + dir}
}

// pushRun runs moatc with env, under a timeout shorter than moatcRun's: a push to a
// registry on this host takes seconds.
func pushRun(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, moatc, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), env...)
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("moatc %v: timed out\n%s", args, errb.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("moatc %v: %v", args, err)
	}
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// shortContext is a test's context for a registry on this host.
func shortContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// storeDigest is the digest `moatc image ls` shows for image ref.
func storeDigest(t *testing.T, ref string) string {
	t.Helper()
	var imgs []struct{ Name, Digest string }
	decodeJSON(t, mustRun(t, "image", "ls", "--json").stdout, &imgs)
	for _, i := range imgs {
		if i.Name == ref {
			return i.Digest
		}
	}
	t.Fatalf("%s is not in the store", ref)
	return ""
}

// checkInRegistry reads ref back from its registry: its digest must be digest, and every
// manifest, config and layer under it must be there and match its digest.
func checkInRegistry(t *testing.T, ref, digest string, auth authn.Authenticator) *remote.Descriptor {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ropts := []remote.Option{remote.WithContext(shortContext(t))}
	if auth != nil {
		ropts = append(ropts, remote.WithAuth(auth))
	}
	d, err := remote.Get(r, ropts...)
	if err != nil {
		t.Fatalf("reading %s back: %v", ref, err)
	}
	if d.Digest.String() != digest {
		t.Errorf("%s in the registry is %s, moatc printed %s", ref, d.Digest, digest)
	}
	var imgs []v1.Image
	if d.MediaType.IsIndex() {
		idx, err := d.ImageIndex()
		if err != nil {
			t.Fatal(err)
		}
		im, err := idx.IndexManifest()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range im.Manifests {
			img, err := idx.Image(m.Digest)
			if err != nil {
				t.Fatalf("%s: manifest %s: %v", ref, m.Digest, err)
			}
			imgs = append(imgs, img)
		}
	} else {
		img, err := d.Image()
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, img)
	}
	for _, img := range imgs {
		if _, err := img.ConfigFile(); err != nil {
			t.Errorf("%s: config: %v", ref, err)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) == 0 {
			t.Fatalf("%s: %d layers, %v", ref, len(layers), err)
		}
		for _, l := range layers {
			ld, _ := l.Digest()
			rc, err := l.Compressed()
			if err != nil {
				t.Errorf("%s: layer %s: %v", ref, ld, err)
				continue
			}
			// go-containerregistry checks the digest as the blob is read.
			if _, err := io.Copy(io.Discard, rc); err != nil {
				t.Errorf("%s: layer %s: %v", ref, ld, err)
			}
			rc.Close()
		}
	}
	return d
}

// nonLoopbackIP is an address of this host that is not loopback, for a registry moatc must
// not speak plain HTTP to unless told.
func nonLoopbackIP(t *testing.T) string {
	t.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	msg := fmt.Sprintf("this host has no non-loopback IPv4 address (%v)", addrs)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
