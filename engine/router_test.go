package engine

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// newTestServer serves the routes that need no containerd (ping, errors, decoding).
func newTestServer(t *testing.T) *httptest.Server {
	e := &Engine{cfg: Config{Version: "test"}}
	s := httptest.NewServer(e.newMux())
	t.Cleanup(s.Close)
	return s
}

func TestPingAndVersions(t *testing.T) {
	s := newTestServer(t)
	for _, path := range []string{"/_ping", "/v1.24/_ping", "/v1.44/_ping", "/v1.99/_ping", "/v1.5/_ping"} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			req, _ := http.NewRequest(method, s.URL+path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			h := resp.Header
			if resp.StatusCode != 200 || h.Get("Api-Version") != MaxAPIVersion || h.Get("Ostype") != "linux" ||
				h.Get("Builder-Version") == "" || h.Get("Docker-Experimental") != "false" || h.Get("Cache-Control") == "" || h.Get("Pragma") != "no-cache" {
				t.Errorf("%s %s: %d %v", method, path, resp.StatusCode, h)
			}
			if want := map[string]string{"GET": "OK", "HEAD": ""}[method]; string(body) != want {
				t.Errorf("%s %s: body %q", method, path, body)
			}
		}
	}
}

// errorOf does a request and returns its status and Docker error message.
func errorOf(t *testing.T, method, url, contentType string, body io.Reader) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, body)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q, want application/json (clients print other bodies raw)", method, url, ct)
	}
	var e struct{ Message string }
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Errorf("%s %s: the error is not Docker's JSON: %v", method, url, err)
	}
	return resp.StatusCode, e.Message
}

func TestErrors(t *testing.T) {
	s := newTestServer(t)
	code, msg := errorOf(t, "POST", s.URL+"/v1.44/swarm/init", "", nil)
	if code != 501 || msg != "moatc does not support POST /swarm/init yet" {
		t.Errorf("unknown endpoint: %d %q", code, msg)
	}
	code, msg = errorOf(t, "PUT", s.URL+"/_ping", "", nil)
	if code != 501 || !strings.Contains(msg, "PUT /_ping") {
		t.Errorf("a known path with another method: %d %q", code, msg)
	}
	code, msg = errorOf(t, "POST", s.URL+"/containers/create", "application/json", strings.NewReader(`{"Image": "busybox",`))
	if code != 400 || !strings.Contains(msg, "invalid JSON") {
		t.Errorf("malformed JSON: %d %q", code, msg)
	}
	code, msg = errorOf(t, "POST", s.URL+"/containers/create?name=a/b", "application/json", strings.NewReader(`{}`))
	if code != 400 || !strings.Contains(msg, "Invalid container name") {
		t.Errorf("bad name: %d %q", code, msg)
	}
	big := strings.NewReader(`{"Image":"` + strings.Repeat("a", 2<<20) + `"}`)
	code, msg = errorOf(t, "POST", s.URL+"/containers/create", "application/json", big)
	if code != 413 || !strings.Contains(msg, "larger than moatc accepts") {
		t.Errorf("a 2 MiB body: %d %q", code, msg)
	}
	code, msg = errorOf(t, "GET", s.URL+"/containers/json?filters=%7Bbad", "", nil)
	if code != 400 || !strings.Contains(msg, "invalid filters") {
		t.Errorf("bad filters: %d %q", code, msg)
	}
}

// A body that never ends is cut at the limit, not read forever.
func TestEndlessBody(t *testing.T) {
	s := newTestServer(t)
	pr, pw := io.Pipe()
	go func() {
		chunk := []byte(strings.Repeat("x", 64<<10))
		for {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
	}()
	defer pw.Close()
	done := make(chan int, 1)
	go func() {
		req, _ := http.NewRequest("POST", s.URL+"/containers/create", pr)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- -1
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case code := <-done:
		if code != 413 && code != -1 {
			t.Errorf("an endless body: %d, want 413 (or the connection closed)", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("an endless body kept the engine reading")
	}
}

func TestVersionLess(t *testing.T) {
	if !versionLess("1.24", "1.44") || versionLess("1.44", "1.44") || !versionLess("1.9", "1.10") || versionLess("2.0", "1.99") {
		t.Error("versionLess")
	}
}
