package e2e

import (
	"archive/tar"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestEngineImages drives the engine's image endpoints (issue 10) with the real Docker CLI,
// under both runtimes: images, inspect, history, tag, rmi (and its conflicts), save, load
// and a run of what was loaded, prune, a pull that cannot reach its registry, and the
// images' events.
func TestEngineImages(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			// Its pulls may reach the registry the test serves on 127.0.0.1 (closed to runs:
			// TestEngine checks the refusal).
			eng := launchEngine(t, filepath.Join(home, "engine-img-"+rt+".sock"), append([]string{"--namespace", "moatc-engine-img-" + rt,
				"--image", "busybox", "--ephemeral", "--allow-private-registry"}, sandboxArgs(rt)...)...)
			eng.stopAtCleanup(t)
			d := eng.cli(t, docker)
			since := time.Now().Add(-time.Second).Unix()

			var id string
			tarPath := filepath.Join(t.TempDir(), "busybox.tar") // saved, loaded, then served by a registry
			t.Run("list-inspect-history", func(t *testing.T) {
				d.t = t
				out := d.ok("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
				m := regexp.MustCompile(`^busybox:latest (sha256:[0-9a-f]{64})\n$`).FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("docker images: %q", out)
				}
				id = m[1]
				var insp []struct {
					ID           string `json:"Id"`
					RepoTags     []string
					RepoDigests  []string
					Created      string
					Size         int64
					Architecture string
					Os           string
					Config       struct{ Cmd, Env []string }
					RootFS       struct {
						Type   string
						Layers []string
					}
				}
				if err := json.Unmarshal([]byte(d.ok("image", "inspect", "busybox")), &insp); err != nil || len(insp) != 1 {
					t.Fatalf("image inspect: %v %+v", err, insp)
				}
				i := insp[0]
				if i.ID != id || len(i.RepoTags) != 1 || i.RepoTags[0] != "busybox:latest" || len(i.RepoDigests) != 1 || i.RepoDigests[0] != "busybox@"+id ||
					i.Os != "linux" || i.Architecture == "" || i.Size <= 0 || i.RootFS.Type != "layers" || len(i.RootFS.Layers) == 0 ||
					!strings.HasPrefix(i.RootFS.Layers[0], "sha256:") {
					t.Errorf("image inspect: %+v", i)
				}
				if _, err := time.Parse(time.RFC3339Nano, i.Created); err != nil {
					t.Errorf("image inspect: Created %q: %v", i.Created, err)
				}
				// By ID and by a prefix of it, as Docker takes them.
				if out := d.ok("image", "inspect", "-f", "{{.Id}}", id[7:19]); out != id+"\n" {
					t.Errorf("image inspect by a short ID: %q", out)
				}
				if r := d.run("", "image", "inspect", "moatc-e2e/nope"); r.code != 1 || !strings.Contains(r.stderr, "No such image: moatc-e2e/nope:latest") {
					t.Errorf("image inspect of a missing image: %+v", r)
				}
				t.Logf("docker images:\n%s\ndocker history busybox:\n%s", d.ok("images"), d.ok("history", "busybox"))
				if out := d.ok("history", "--no-trunc", "--format", "{{.ID}}", "busybox"); !strings.HasPrefix(out, id+"\n") {
					t.Errorf("history: %q", out)
				}
			})

			t.Run("tag-rmi", func(t *testing.T) {
				d.t = t
				d.ok("tag", "busybox", "moatc-e2e/img:1")
				d.ok("tag", id, "moatc-e2e/img:2")
				if out := d.ok("images", "--filter", "reference=moatc-e2e/*", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"); out != "moatc-e2e/img:1 "+id[7:19]+"\nmoatc-e2e/img:2 "+id[7:19]+"\n" {
					t.Errorf("images --filter reference=: %q", out)
				}
				if out := d.ok("images", "--filter", "dangling=true", "-q"); out != "" {
					t.Errorf("images --filter dangling=true: %q", out)
				}
				if out := d.ok("images", "--filter", "label=moatc-e2e=nope", "-q"); out != "" {
					t.Errorf("images --filter label=: %q", out)
				}
				if r := d.run("", "tag", "busybox", "Bad/Name"); r.code == 0 || !strings.Contains(r.stderr, "invalid reference format") {
					t.Errorf("tag with a bad name: %+v", r)
				}
				// A name of an image with other names is untagged; the image stays.
				if out := d.ok("rmi", "moatc-e2e/img:1"); out != "Untagged: moatc-e2e/img:1\n" {
					t.Errorf("rmi of one of several names: %q", out)
				}
				// By ID, an image in several repositories needs -f.
				if r := d.run("", "rmi", id[7:19]); r.code != 1 || !strings.Contains(r.stderr, "conflict: unable to delete "+id[7:19]+" (must be forced) - image is referenced in multiple repositories") {
					t.Errorf("rmi by ID of an image in two repositories: %+v", r)
				}
				d.ok("rmi", "moatc-e2e/img:2")
				// A container using the image: 409 by name unless -f; by ID, never while it runs.
				cid := strings.TrimSpace(d.ok("create", "--name", "e2e-img-user", "busybox", "true"))
				if r := d.run("", "rmi", "busybox"); r.code != 1 || !strings.Contains(r.stderr,
					`conflict: unable to remove repository reference "busybox" (must force) - container `+cid[:12]+` is using its referenced image `+id[7:19]) {
					t.Errorf("rmi of an image a container uses: %+v", r)
				}
				if r := d.run("", "rmi", id); r.code != 1 || !strings.Contains(r.stderr, "image is being used by stopped container "+cid[:12]) {
					t.Errorf("rmi by ID of an image a stopped container uses: %+v", r)
				}
				d.ok("run", "-d", "--name", "e2e-img-running", "busybox", "sleep", "300")
				if r := d.run("", "rmi", "-f", id); r.code != 1 || !strings.Contains(r.stderr, "(cannot be forced) - image is being used by running container") {
					t.Errorf("rmi -f by ID of an image a running container uses: %+v", r)
				}
				d.ok("rm", "-f", "e2e-img-running", "e2e-img-user")
			})

			t.Run("save-rmi-load-run", func(t *testing.T) {
				d.t = t
				d.ok("save", "-o", tarPath, "busybox")
				files := imageTarFiles(t, tarPath)
				for _, f := range []string{"manifest.json", "index.json", "oci-layout"} {
					if !files[f] {
						t.Errorf("docker save: %s is not in the tar (%v)", f, files)
					}
				}
				if out := d.ok("rmi", "busybox"); out != "Untagged: busybox:latest\nDeleted: "+id+"\n" {
					t.Errorf("rmi of the last name: %q", out)
				}
				if out := d.ok("images", "-q"); out != "" {
					t.Errorf("images after rmi: %q", out)
				}
				if r := d.run("", "save", "-o", filepath.Join(t.TempDir(), "x.tar"), "busybox"); r.code != 1 || !strings.Contains(r.stderr, "No such image: busybox:latest") {
					t.Errorf("save of a missing image: %+v", r)
				}
				if out := d.ok("load", "-i", tarPath); out != "Loaded image: busybox:latest\n" {
					t.Errorf("load: %q", out)
				}
				if out := d.ok("images", "--no-trunc", "-q"); out != id+"\n" {
					t.Errorf("images after load: %q, want %s", out, id)
				}
				if out := d.ok("run", "--rm", "busybox", "echo", "loaded"); out != "loaded\n" {
					t.Errorf("a run of the loaded image: %q", out)
				}
				// Not a tar: a clean 400 through the CLI.
				if r := d.run("this is not a tar\n", "load"); r.code != 1 || !strings.Contains(r.stderr, "importing image archive") {
					t.Errorf("load of something that is not a tar: %+v", r)
				}
			})

			t.Run("pull-errors", func(t *testing.T) {
				d.t = t
				start := time.Now()
				if r := d.run("", "pull", "127.0.0.1:1/x:y"); r.code != 1 || !strings.Contains(r.stderr, "Error response from daemon") || !strings.Contains(r.stderr, "connection refused") {
					t.Errorf("pull from a registry that refuses: %+v", r)
				}
				r := d.run("", "run", "--rm", "127.0.0.1:1/x:y", "true")
				if r.code != 125 || !strings.Contains(r.stderr, "Unable to find image '127.0.0.1:1/x:y' locally") || !strings.Contains(r.stderr, "connection refused") {
					t.Errorf("run of a missing image whose registry refuses: %+v", r)
				}
				if time.Since(start) > 30*time.Second {
					t.Errorf("the pulls took %s: they must fail promptly", time.Since(start))
				}
				if r := d.run("", "search", "busybox"); r.code != 1 || !strings.Contains(r.stderr, "moatc does not support searching registries yet") {
					t.Errorf("search: %+v", r)
				}
				if r := d.run("", "push", "busybox"); r.code != 1 || !strings.Contains(r.stderr, "moatc does not support pushing images yet") {
					t.Errorf("push: %+v", r)
				}
				check := func(what string, r httpResult, code int, msg string) {
					t.Helper()
					var e struct{ Message string }
					if r.code != code || json.Unmarshal([]byte(r.body), &e) != nil || !strings.Contains(e.Message, msg) {
						t.Errorf("%s: want %d {\"message\": ...%s...}, got %+v", what, code, msg, r)
					}
				}
				check("import (fromSrc)", httpDo(t, eng.sock, "POST", "/v1.44/images/create?fromSrc=-", "", nil), 501, "docker import")
				check("a pull without fromImage", httpDo(t, eng.sock, "POST", "/v1.44/images/create", "", nil), 400, "fromImage")
				check("X-Registry-Auth that is not base64", imageHTTPDo(t, eng.sock, "POST", "/v1.44/images/create?fromImage=127.0.0.1:1/x&tag=y",
					map[string]string{"X-Registry-Auth": "!!!"}), 400, "invalid X-Registry-Auth")
				check("a load that is not a tar", httpDo(t, eng.sock, "POST", "/v1.44/images/load", "application/x-tar",
					strings.NewReader(strings.Repeat("not a tar\n", 1000))), 400, "importing image archive")
				check("inspect of a missing image", engineGet(t, eng.sock, "/v1.44/images/moatc-e2e/nope:1/json"), 404, "No such image: moatc-e2e/nope:1")
			})

			t.Run("prune", func(t *testing.T) {
				d.t = t
				if out := d.ok("image", "prune", "-f"); !strings.Contains(out, "Total reclaimed space: 0B") {
					t.Errorf("prune of dangling images (there are none): %q", out)
				}
				if out := d.ok("image", "prune", "-a", "-f", "--filter", "label=moatc-e2e=nope"); strings.Contains(out, "Deleted") {
					t.Errorf("prune -a --filter label=: %q", out)
				}
				d.ok("create", "--name", "e2e-img-keep", "busybox", "true")
				if out := d.ok("image", "prune", "-a", "-f"); strings.Contains(out, "Deleted") {
					t.Errorf("prune -a removed an image a container uses: %q", out)
				}
				d.ok("rm", "e2e-img-keep")
				d.ok("tag", "busybox", "moatc-e2e/prune:1")
				out := d.ok("image", "prune", "-a", "-f")
				if !strings.Contains(out, "untagged: busybox:latest") || !strings.Contains(out, "untagged: moatc-e2e/prune:1") || !strings.Contains(out, "deleted: "+id) {
					t.Errorf("prune -a: %q", out)
				}
				if out := d.ok("images", "-q"); out != "" {
					t.Errorf("images after prune -a: %q", out)
				}
			})

			t.Run("pull", func(t *testing.T) {
				d.t = t
				reg := imageRegistry(t, tarPath, "e2e", "s3cret")
				ref := reg + "/moatc-e2e/pulled:1"
				// Without credentials the registry refuses: a clean error.
				anon := &dockerCLI{t: t, bin: d.bin, env: []string{d.env[0], "DOCKER_CONFIG=" + t.TempDir()}}
				if r := anon.run("", "pull", ref); r.code != 1 || !strings.Contains(r.stderr, "Error response from daemon") || !strings.Contains(r.stderr, "401") {
					t.Errorf("pull without credentials: %+v", r)
				}
				// With them (the CLI sends them as X-Registry-Auth): Docker's progress.
				cfg := t.TempDir()
				auth := base64.StdEncoding.EncodeToString([]byte("e2e:s3cret"))
				if err := os.WriteFile(filepath.Join(cfg, "config.json"), []byte(`{"auths":{"`+reg+`":{"auth":"`+auth+`"}}}`), 0o600); err != nil {
					t.Fatal(err)
				}
				authed := &dockerCLI{t: t, bin: d.bin, env: []string{d.env[0], "DOCKER_CONFIG=" + cfg}}
				out := authed.ok("pull", ref)
				t.Logf("docker pull %s:\n%s", ref, out)
				for _, want := range []string{"1: Pulling from moatc-e2e/pulled\n", ": Pull complete\n", "Digest: " + id + "\n",
					"Status: Downloaded newer image for " + ref + "\n"} {
					if !strings.Contains(out, want) {
						t.Errorf("pull: %q is not in\n%s", want, out)
					}
				}
				if out := authed.ok("pull", ref); !strings.Contains(out, "Status: Image is up to date for "+ref+"\n") {
					t.Errorf("a second pull:\n%s", out)
				}
				if out := d.ok("run", "--rm", ref, "echo", "pulled"); out != "pulled\n" {
					t.Errorf("a run of the pulled image: %q", out)
				}
				d.ok("rmi", ref)
			})

			t.Run("events", func(t *testing.T) {
				d.t = t
				out := d.ok("events", "--since", strconv.FormatInt(since, 10), "--until", strconv.FormatInt(time.Now().Unix()+1, 10), "--filter", "type=image",
					"--format", "{{.Action}} {{.Actor.Attributes.name}}")
				for _, want := range []string{"tag moatc-e2e/img:1", "untag moatc-e2e/img:1", "save busybox:latest", "untag busybox:latest",
					"delete " + id, "load busybox:latest", "prune <no value>", "pull 127.0.0.1:"} {
					if !strings.Contains("\n"+out, "\n"+want) {
						t.Errorf("events: %q is not in\n%s", want, out)
					}
				}
			})
		})
	}
}

// imageTarFiles lists the files of a tar.
func imageTarFiles(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	files := map[string]bool{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("reading %s: %v", path, err)
		}
		files[h.Name] = true
	}
}

// imageHTTPDo sends a request without a body with headers.
func imageHTTPDo(t *testing.T, sock, method, path string, headers map[string]string) httpResult {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	req, err := http.NewRequest(method, "http://docker"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return httpResult{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return httpResult{code: resp.StatusCode, header: resp.Header, body: string(b)}
}

// imageRegistry serves the image of an OCI layout tar (docker save's) read-only as a
// registry on 127.0.0.1, any repository and tag, behind basic auth; it returns host:port.
func imageRegistry(t *testing.T, tarPath, user, password string) string {
	t.Helper()
	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	blobs := map[string][]byte{}
	var index []byte
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "index.json" {
			index = b
		} else if d, ok := strings.CutPrefix(h.Name, "blobs/sha256/"); ok && d != "" {
			blobs["sha256:"+d] = b
		}
	}
	var idx struct {
		Manifests []struct{ MediaType, Digest string }
	}
	if err := json.Unmarshal(index, &idx); err != nil || len(idx.Manifests) == 0 {
		t.Fatalf("the tar's index.json: %v %s", err, index)
	}
	top := idx.Manifests[0]
	types := map[string]string{top.Digest: top.MediaType}
	// The manifests under an index, by their media type.
	var sub struct {
		Manifests []struct{ MediaType, Digest string }
	}
	if json.Unmarshal(blobs[top.Digest], &sub) == nil {
		for _, m := range sub.Manifests {
			types[m.Digest] = m.MediaType
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != user || p != password {
			w.Header().Set("WWW-Authenticate", `Basic realm="moatc-e2e"`)
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
			return
		}
		parts := strings.Split(r.URL.Path, "/")
		if r.URL.Path == "/v2/" {
			return
		}
		last, kind := parts[len(parts)-1], parts[len(parts)-2]
		dgst := last
		if kind == "manifests" && !strings.HasPrefix(last, "sha256:") {
			dgst = top.Digest
		}
		b, ok := blobs[dgst]
		if !ok || (kind != "manifests" && kind != "blobs") {
			http.Error(w, `{"errors":[{"code":"NOT_FOUND"}]}`, http.StatusNotFound)
			return
		}
		if kind == "manifests" {
			w.Header().Set("Content-Type", types[dgst])
		} else {
			w.Header().Set("Content-Type", "application/octet-stream")
		}
		w.Header().Set("Docker-Content-Digest", dgst)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if r.Method != http.MethodHead {
			w.Write(b)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}
