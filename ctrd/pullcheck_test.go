package ctrd

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

// TestCheckedClientRefusesRedirects: a pull's HTTP client puts every connection to the check,
// the first and a redirect's, with the address it resolved to.
func TestCheckedClientRefusesRedirects(t *testing.T) {
	t.Setenv("HTTP_PROXY", "")
	t.Setenv("HTTPS_PROXY", "")
	t.Setenv("http_proxy", "")
	t.Setenv("https_proxy", "")
	inner := listenOn(t, "127.0.0.2:0", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("internal")) }))
	outer := listenOn(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "http://"+inner+"/", http.StatusTemporaryRedirect)
			return
		}
		w.Write([]byte("ok"))
	}))
	denied := errors.New("denied")
	var seen []netip.Addr
	c := checkedClient(func(a netip.Addr) error {
		seen = append(seen, a)
		if a == netip.MustParseAddr("127.0.0.1") {
			return nil
		}
		return denied
	})
	resp, err := c.Get("http://" + outer + "/")
	if err != nil {
		t.Fatalf("a connection the check allows: %v", err)
	}
	resp.Body.Close()
	if _, err := c.Get("http://" + outer + "/redirect"); !errors.Is(err, denied) {
		t.Errorf("a redirect to an address the check refuses: %v, want the check's error", err)
	}
	if _, err := c.Get("http://" + inner + "/"); !errors.Is(err, denied) {
		t.Errorf("a connection the check refuses: %v, want the check's error", err)
	}
	if len(seen) < 3 || seen[len(seen)-1] != netip.MustParseAddr("127.0.0.2") {
		t.Errorf("the check saw %v", seen)
	}
}

func listenOn(t *testing.T, addr string, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	s := &httptest.Server{Listener: ln, Config: &http.Server{Handler: h}}
	s.Start()
	t.Cleanup(s.Close)
	return ln.Addr().String()
}
