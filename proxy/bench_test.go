package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkProxy measures the proxy against direct connections, once per call (run it with
// -benchtime 1x, as make bench does): keep-alive throughput and the latency of a first request
// on a new connection. It prints its own figures. MOATC_BENCH_WORKERS sets the number of
// concurrent clients (default 8).
func BenchmarkProxy(b *testing.B) {
	t := b
	cert, upPool := upstreamTLS(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	target := "https://api.test:" + port + "/v1/ping"

	trace, err := os.Create(filepath.Join(t.TempDir(), "network.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer trace.Close()
	cfg := baseConfig(t)
	cfg.Trace = trace
	e := startProxy(t, cfg)

	pool := upPool.Clone()
	pool.AppendCertsFromPEM(e.ca.CertPEM())
	newTransport := func(viaProxy bool) *http.Transport {
		var d net.Dialer
		tr := &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: pool},
			MaxIdleConnsPerHost: 16,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if host, p, _ := net.SplitHostPort(addr); host == "api.test" {
					addr = net.JoinHostPort("127.0.0.1", p) // direct: what DNS would do
				}
				return d.DialContext(ctx, network, addr)
			},
		}
		if viaProxy {
			tr.Proxy = http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("moatc", testSecret), Host: e.p.Addr().String()})
		}
		return tr
	}
	get := func(c *http.Client) {
		resp, err := c.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %s", resp.Status)
		}
	}

	// Rounds alternate direct and proxy so that drift in a shared machine's speed hits both.
	workers, rounds := 8, 6
	if n, err := strconv.Atoi(os.Getenv("MOATC_BENCH_WORKERS")); err == nil && n > 0 {
		workers = n
	}
	round := 500 * time.Millisecond
	clients := map[bool]*http.Client{}
	for _, via := range []bool{false, true} {
		tr := newTransport(via)
		defer tr.CloseIdleConnections()
		clients[via] = &http.Client{Transport: tr}
		var wg sync.WaitGroup
		for range workers { // warm the pool
			wg.Go(func() { get(clients[via]) })
		}
		wg.Wait()
	}
	count := map[bool]int64{}
	elapsed := map[bool]time.Duration{}
	for range rounds {
		for _, via := range []bool{false, true} {
			var n atomic.Int64
			var wg sync.WaitGroup
			start := time.Now()
			stop := start.Add(round)
			for range workers {
				wg.Go(func() {
					for time.Now().Before(stop) {
						get(clients[via])
						n.Add(1)
					}
				})
			}
			wg.Wait()
			count[via] += n.Load()
			elapsed[via] += time.Since(start)
		}
	}
	direct := float64(count[false]) / elapsed[false].Seconds()
	viaProxy := float64(count[true]) / elapsed[true].Seconds()
	fmt.Printf("proxy: keep-alive throughput direct %.0f req/s, proxy %.0f req/s, ratio %.2f (goal >= 0.70)\n",
		direct, viaProxy, viaProxy/direct)

	firstRequest := func(viaProxy bool) time.Duration {
		var ds []time.Duration
		for range 50 {
			tr := newTransport(viaProxy)
			c := &http.Client{Transport: tr}
			start := time.Now()
			get(c)
			ds = append(ds, time.Since(start))
			tr.CloseIdleConnections()
		}
		slices.Sort(ds)
		return ds[len(ds)/2]
	}
	firstRequest(true) // the leaf is made and cached here
	d, p := firstRequest(false), firstRequest(true)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	fmt.Printf("proxy: new connection (cached leaf) direct %.1f ms, proxy %.1f ms, %+.1f ms (goal <= 5 ms)\n",
		ms(d), ms(p), ms(p-d))
}
