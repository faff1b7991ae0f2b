// Command moatc-reaper is moatc's own reaper for testcontainers: it speaks the protocol of
// testcontainers' ryuk (not ryuk's code, and not Docker's image), so a testcontainers session
// against moatc's engine gets its containers, networks, volumes and images removed when it ends.
//
// It listens on :8080 (RYUK_PORT), prints "Started", and reads lines of label filters from each
// client ("label=k=v&label=k2=v2"), answering "ACK" to each. When every client has gone and
// none came back within RYUK_RECONNECTION_TIMEOUT (or none came at all within
// RYUK_CONNECTION_TIMEOUT), it removes what matches the filters through the Docker socket
// (DOCKER_HOST, default unix:///var/run/docker.sock) and exits. It is static and uses only the
// standard library, so its image is this one file (engine/reaper.go makes it).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// labelRyuk marks the reaper's own container, which it never removes (it is AutoRemove).
const labelRyuk = "org.testcontainers.ryuk"

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		log.Fatalf("moatc-reaper: %v", err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf(":%d", cfg.port))
	if err != nil {
		log.Fatalf("moatc-reaper: listening: %v", err)
	}
	r := newReaper(cfg)
	log.Printf("Started: moatc-reaper on %s (connection timeout %s, reconnection timeout %s, docker %s)", l.Addr(), cfg.connTimeout, cfg.reconnTimeout, cfg.dockerHost)
	go r.accept(l)
	sets := r.wait()
	l.Close()
	d, err := newDocker(cfg.dockerHost)
	if err != nil {
		log.Fatalf("moatc-reaper: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.shutdownTimeout)
	defer cancel()
	if err := reap(ctx, d, sets); err != nil {
		log.Printf("moatc-reaper: %v", err)
		os.Exit(1)
	}
}

type config struct {
	port            int
	connTimeout     time.Duration // for the first client
	reconnTimeout   time.Duration // after the last one left
	shutdownTimeout time.Duration // for the removals
	dockerHost      string
	verbose         bool
}

// configFromEnv reads ryuk's environment variables, with ryuk's defaults.
func configFromEnv(getenv func(string) string) (config, error) {
	c := config{port: 8080, connTimeout: time.Minute, reconnTimeout: 10 * time.Second, shutdownTimeout: 10 * time.Minute,
		dockerHost: "unix:///var/run/docker.sock"}
	if v := getenv("RYUK_PORT"); v != "" {
		if _, err := fmt.Sscanf(v, "%d", &c.port); err != nil || c.port <= 0 || c.port > 65535 {
			return c, fmt.Errorf("RYUK_PORT %q is not a port", v)
		}
	}
	for _, d := range []struct {
		name string
		to   *time.Duration
	}{{"RYUK_CONNECTION_TIMEOUT", &c.connTimeout}, {"RYUK_RECONNECTION_TIMEOUT", &c.reconnTimeout}, {"RYUK_SHUTDOWN_TIMEOUT", &c.shutdownTimeout}} {
		if v := getenv(d.name); v != "" {
			t, err := time.ParseDuration(v)
			if err != nil || t <= 0 {
				return c, fmt.Errorf("%s %q is not a duration such as 10s", d.name, v)
			}
			*d.to = t
		}
	}
	if v := getenv("DOCKER_HOST"); v != "" {
		c.dockerHost = v
	}
	c.verbose = getenv("RYUK_VERBOSE") == "true"
	return c, nil
}

// parseFilters reads one client line, "label=k=v&label=k2=v2" (a URL query), as Docker
// filters. The key is the set's canonical form, so a line sent twice is one set.
func parseFilters(line string) (key string, f map[string][]string, err error) {
	line = strings.TrimSpace(line)
	if line == "" {
		return "", nil, errors.New("empty filter line")
	}
	q, err := url.ParseQuery(line)
	if err != nil {
		return "", nil, fmt.Errorf("filter line %q: %w", line, err)
	}
	for k, vs := range q {
		if k == "" {
			return "", nil, fmt.Errorf("filter line %q: a filter with no name", line)
		}
		sort.Strings(vs)
	}
	return q.Encode(), q, nil
}

// filtersJSON is f as the Engine API's filters parameter: {"label":{"k=v":true}}.
func filtersJSON(f map[string][]string) string {
	m := map[string]map[string]bool{}
	for k, vs := range f {
		m[k] = map[string]bool{}
		for _, v := range vs {
			m[k][v] = true
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// reaper counts its clients and collects their filter sets.
type reaper struct {
	cfg     config
	mu      sync.Mutex
	clients int
	seen    bool
	sets    map[string]map[string][]string
	change  chan struct{} // a client came or went
}

func newReaper(cfg config) *reaper {
	return &reaper{cfg: cfg, sets: map[string]map[string][]string{}, change: make(chan struct{}, 1)}
}

func (r *reaper) accept(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		r.connected(1)
		go func() {
			defer r.connected(-1)
			r.serve(c, c)
			c.Close()
		}()
	}
}

func (r *reaper) connected(d int) {
	r.mu.Lock()
	r.clients += d
	r.seen = true
	r.mu.Unlock()
	select {
	case r.change <- struct{}{}:
	default:
	}
}

// serve reads filter lines from one client until it leaves, answering each.
func (r *reaper) serve(in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), 1<<20)
	for sc.Scan() {
		key, f, err := parseFilters(sc.Text())
		if err != nil {
			log.Printf("moatc-reaper: %v", err)
			fmt.Fprintf(out, "ERROR: %v\n", err)
			continue
		}
		r.mu.Lock()
		r.sets[key] = f
		r.mu.Unlock()
		if r.cfg.verbose {
			log.Printf("moatc-reaper: adding filter %s", key)
		}
		if _, err := io.WriteString(out, "ACK\n"); err != nil {
			return
		}
	}
}

// wait returns the filter sets once no client is left and none came back in time (or none
// came at all).
func (r *reaper) wait() []map[string][]string {
	timer := time.NewTimer(r.cfg.connTimeout)
	defer timer.Stop()
	for {
		select {
		case <-r.change:
			r.mu.Lock()
			n := r.clients
			r.mu.Unlock()
			timer.Stop()
			if n == 0 {
				timer.Reset(r.cfg.reconnTimeout)
			}
		case <-timer.C:
			r.mu.Lock()
			n, seen := r.clients, r.seen
			var sets []map[string][]string
			for _, f := range r.sets {
				sets = append(sets, f)
			}
			r.mu.Unlock()
			if n > 0 {
				continue
			}
			if !seen {
				log.Printf("moatc-reaper: no client connected within %s", r.cfg.connTimeout)
			}
			return sets
		}
	}
}

// docker is a minimal Engine API client over the socket.
type docker struct {
	hc   *http.Client
	base string
}

func newDocker(host string) (*docker, error) {
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("DOCKER_HOST %q: %w", host, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &docker{hc: &http.Client{Transport: tr}, base: "http://docker"}, nil
	case "tcp", "http":
		return &docker{hc: &http.Client{}, base: "http://" + u.Host}, nil
	}
	return nil, fmt.Errorf("DOCKER_HOST %q: only unix:// and tcp:// are supported", host)
}

func (d *docker) do(ctx context.Context, method, path string, q url.Values, out any) (int, error) {
	u := d.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := d.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(body)))
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: reading the answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

// remove deletes one object; one already gone is no error.
func (d *docker) remove(ctx context.Context, path string, q url.Values) error {
	code, err := d.do(ctx, http.MethodDelete, path, q, nil)
	if code == http.StatusNotFound {
		return nil
	}
	return err
}

// list GETs path into out; an engine that does not implement the kind (501) has none of it.
func (d *docker) list(ctx context.Context, path string, q url.Values, out any) error {
	code, err := d.do(ctx, http.MethodGet, path, q, out)
	if code == http.StatusNotImplemented {
		log.Printf("moatc-reaper: %v (nothing of that kind to remove)", err)
		return nil
	}
	return err
}

// reap removes what matches each set: containers first (they hold networks, volumes and
// images), then networks, volumes and images.
func reap(ctx context.Context, d *docker, sets []map[string][]string) error {
	var errs []error
	for _, f := range sets {
		q := url.Values{"filters": {filtersJSON(f)}}
		var ctrs []struct {
			ID     string
			Labels map[string]string
		}
		if err := d.list(ctx, "/containers/json", url.Values{"all": {"1"}, "filters": q["filters"]}, &ctrs); err != nil {
			errs = append(errs, err)
		}
		removed := 0
		for _, c := range ctrs {
			if c.Labels[labelRyuk] == "true" {
				continue
			}
			removed++
			errs = append(errs, d.remove(ctx, "/containers/"+c.ID, url.Values{"force": {"1"}, "v": {"1"}}))
		}
		var nets []struct{ ID string }
		if err := d.list(ctx, "/networks", q, &nets); err != nil {
			errs = append(errs, err)
		}
		for _, n := range nets {
			errs = append(errs, d.remove(ctx, "/networks/"+n.ID, nil))
		}
		var vols struct{ Volumes []struct{ Name string } }
		if err := d.list(ctx, "/volumes", q, &vols); err != nil {
			errs = append(errs, err)
		}
		for _, v := range vols.Volumes {
			errs = append(errs, d.remove(ctx, "/volumes/"+url.PathEscape(v.Name), url.Values{"force": {"1"}}))
		}
		var imgs []struct{ ID string }
		if err := d.list(ctx, "/images/json", q, &imgs); err != nil {
			errs = append(errs, err)
		}
		for _, i := range imgs {
			errs = append(errs, d.remove(ctx, "/images/"+i.ID, url.Values{"force": {"1"}}))
		}
		log.Printf("moatc-reaper: removed for %s: %d containers, %d networks, %d volumes, %d images", filtersJSON(f), removed, len(nets), len(vols.Volumes), len(imgs))
	}
	return errors.Join(errs...)
}
