package main

import (
	"bufio"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFilters(t *testing.T) {
	line := "label=org.testcontainers=true&label=org.testcontainers.sessionId=abc&label=org.testcontainers.reap=true\n"
	key, f, err := parseFilters(line)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"label": {"org.testcontainers.reap=true", "org.testcontainers.sessionId=abc", "org.testcontainers=true"}}
	if !reflect.DeepEqual(f, want) {
		t.Errorf("filters %v, want %v", f, want)
	}
	// The same set in another order is the same key.
	key2, _, err := parseFilters("label=org.testcontainers.reap=true&label=org.testcontainers=true&label=org.testcontainers.sessionId=abc")
	if err != nil || key2 != key {
		t.Errorf("key %q, want %q (err %v)", key2, key, err)
	}
	if got := filtersJSON(f); got != `{"label":{"org.testcontainers.reap=true":true,"org.testcontainers.sessionId=abc":true,"org.testcontainers=true":true}}` {
		t.Errorf("filtersJSON = %s", got)
	}
	// Escaped values (a label value with & or =) come through decoded.
	_, f, err = parseFilters("label=a%3Db%26c&name=x")
	if err != nil || f["label"][0] != "a=b&c" || f["name"][0] != "x" {
		t.Errorf("escaped: %v %v", f, err)
	}
	for _, bad := range []string{"", "  \n", "label=%zz", "=x"} {
		if _, _, err := parseFilters(bad); err == nil {
			t.Errorf("parseFilters(%q) accepted", bad)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := map[string]string{}
	get := func(k string) string { return env[k] }
	c, err := configFromEnv(get)
	if err != nil || c.port != 8080 || c.connTimeout != time.Minute || c.reconnTimeout != 10*time.Second || c.dockerHost != "unix:///var/run/docker.sock" {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	env = map[string]string{"RYUK_PORT": "9000", "RYUK_CONNECTION_TIMEOUT": "2m", "RYUK_RECONNECTION_TIMEOUT": "1s", "DOCKER_HOST": "unix:///x.sock", "RYUK_VERBOSE": "true"}
	c, err = configFromEnv(get)
	if err != nil || c.port != 9000 || c.connTimeout != 2*time.Minute || c.reconnTimeout != time.Second || c.dockerHost != "unix:///x.sock" || !c.verbose {
		t.Fatalf("set: %+v %v", c, err)
	}
	for k, v := range map[string]string{"RYUK_PORT": "http", "RYUK_CONNECTION_TIMEOUT": "10", "RYUK_RECONNECTION_TIMEOUT": "-1s"} {
		env = map[string]string{k: v}
		if _, err := configFromEnv(get); err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%s: err %v", k, v, err)
		}
	}
}

// TestProtocol drives the reaper as testcontainers does, over TCP: a line, an ACK; a bad line,
// an error; the client leaves; after the reconnection timeout the sets come out.
func TestProtocol(t *testing.T) {
	r := newReaper(config{connTimeout: 5 * time.Second, reconnTimeout: 300 * time.Millisecond})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go r.accept(l)
	done := make(chan []map[string][]string)
	go func() { done <- r.wait() }()

	talk := func(lines ...string) []string {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		var got []string
		for _, line := range lines {
			c.Write([]byte(line + "\n"))
			a, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, strings.TrimSpace(a))
		}
		return got
	}
	if got := talk("label=a=1&label=b=2", "label=%zz"); got[0] != "ACK" || !strings.HasPrefix(got[1], "ERROR:") {
		t.Fatalf("answers %q", got)
	}
	// A client coming back within the grace keeps the reaper waiting.
	time.Sleep(100 * time.Millisecond)
	if got := talk("label=c=3"); got[0] != "ACK" {
		t.Fatalf("answers %q", got)
	}
	start := time.Now()
	select {
	case sets := <-done:
		if len(sets) != 2 {
			t.Fatalf("sets %v, want two", sets)
		}
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Errorf("reaped after %s, before the reconnection timeout", d)
		}
	case <-time.After(4 * time.Second):
		t.Fatal("no reap after the last client left")
	}
}

func TestNoClient(t *testing.T) {
	r := newReaper(config{connTimeout: 100 * time.Millisecond, reconnTimeout: time.Hour})
	start := time.Now()
	if sets := r.wait(); len(sets) != 0 || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("sets %v after %s", sets, time.Since(start))
	}
}
