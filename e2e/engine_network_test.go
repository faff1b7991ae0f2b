package e2e

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"time"

	"github.com/moatc/moatc/cni"
)

// TestEngineNetwork: the containers of `moatc _engine` are on its run's network (issue 10):
// Docker's networks on top, names resolved between the containers of a user network, the run's
// rules for every container, and nothing left after the engine, even after a kill -9 and
// `moatc clean`. The real Docker CLI, under both runtimes.
func TestEngineNetwork(t *testing.T) {
	requireStack(t)
	docker := requireDockerCLI(t)
	// A service of the host, on all its addresses: closed to runs and so to their containers.
	hostL, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hostL.Close()
	go func() {
		for {
			c, err := hostL.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "HTTP/1.0 200 OK\r\n\r\nhost-secret")
			c.Close()
		}
	}()
	hostPort := hostL.Addr().(*net.TCPAddr).Port
	for _, rt := range runtimes {
		t.Run(rt, func(t *testing.T) {
			// Another run, serving on its address: the engine's containers must not reach it.
			other := strings.TrimSpace(mustRun(t, busyboxRun(rt, []string{"-d"}, workspace(t), "sh", "-c",
				"mkdir -p /tmp/w && echo other-run > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w")...).stdout)
			t.Cleanup(func() { moatcRun(t, opts{}, "rm", "-f", other) })
			otherIP := status(t, other).IP

			runID := fmt.Sprintf("en%010x", rand.Uint64()&0xffffffffff)
			ns := "moatc-engnet-e2e-" + rt
			eng := netEngineStart(t, rt, ns, runID)
			t.Cleanup(func() { eng.stop(t) })
			d := eng.cli(t, docker)

			var gw netip.Addr
			t.Run("network ls", func(t *testing.T) {
				d.t = t
				out := d.ok("network", "ls", "--format", "{{.Name}} {{.Driver}}")
				for _, w := range []string{"bridge bridge\n", "host host\n", "none null\n"} {
					if !strings.Contains(out, w) {
						t.Errorf("network ls lacks %q:\n%s", w, out)
					}
				}
				g := strings.TrimSpace(d.ok("network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}}"))
				sub, gws, _ := strings.Cut(g, " ")
				var err error
				if gw, err = netip.ParseAddr(gws); err != nil || !netip.MustParsePrefix(sub).Contains(gw) {
					t.Fatalf("the bridge network's subnet and gateway: %q", g)
				}
			})
			t.Run("names on a user network", func(t *testing.T) {
				d.t = t
				d.ok("network", "create", "--label", "k=v", "n1")
				if r := d.run("", "network", "create", "n1"); r.code == 0 || !strings.Contains(r.stderr, "already exists") {
					t.Errorf("a second network n1: %+v", r)
				}
				if out := d.ok("network", "ls", "--filter", "label=k=v", "--format", "{{.Name}}"); out != "n1\n" {
					t.Errorf("network ls --filter label=k=v: %q", out)
				}
				d.ok("run", "-d", "--network", "n1", "--network-alias", "www", "--name", "web", "busybox", "sh", "-c",
					"mkdir -p /w && echo hello-web > /w/index.html && httpd -f -p 80 -h /w")
				for _, host := range []string{"web", "www"} {
					if out := d.retry(append([]string{"run", "--rm", "--network", "n1", "busybox"}, engnetFetch("http://"+host+"/")...)...); out != "hello-web\n" {
						t.Errorf("wget http://%s/ from n1: %q", host, out)
					}
				}
				// Names go into other containers' hosts files: one that carries names or a line of
				// its own (a blank, a newline) is refused, and web's file is unchanged. (The CLI
				// cuts --alias at a newline, so connect's is sent with a blank.)
				for _, args := range [][]string{
					{"network", "connect", "--alias", "x 10.9.9.9", "n1", "web"},
					{"run", "--rm", "--network", "n1", "--network-alias", "y\n10.9.9.9 web", "busybox", "true"},
					{"run", "--rm", "--network", "n1", "--hostname", "z\n10.9.9.9 web", "busybox", "true"},
				} {
					if r := d.run("", args...); r.code == 0 || !strings.Contains(r.stderr, "invalid") {
						t.Errorf("docker %q: a name with a newline must be refused: %+v", args, r)
					}
				}
				if out := d.ok("exec", "web", "cat", "/etc/hosts"); strings.Contains(out, "10.9.9.9") {
					t.Errorf("a refused name reached web's hosts file:\n%s", out)
				}
				// A container made later is resolved in a running container's /etc/hosts too: the
				// rewrite in place is seen through the bind mount.
				d.ok("run", "-d", "--network", "n1", "--name", "watcher", "busybox", "sh", "-c",
					"for i in $(seq 300); do grep -q late /etc/hosts && wget -O /tmp/o http://late/ 2>/dev/null && cat /tmp/o && exit 0; sleep 0.1; done; cat /etc/hosts; exit 1")
				d.ok("run", "-d", "--network", "n1", "--name", "late", "busybox", "sh", "-c",
					"mkdir -p /w && echo hello-late > /w/index.html && httpd -f -p 80 -h /w")
				if out := d.ok("wait", "watcher"); out != "0\n" {
					t.Errorf("watcher -> late: exit %q, output %q", out, d.ok("logs", "watcher"))
				} else if out := d.ok("logs", "watcher"); out != "hello-late\n" {
					t.Errorf("watcher -> late: %q", out)
				}
				ip := strings.TrimSpace(d.ok("inspect", "web", "--format", "{{(index .NetworkSettings.Networks \"n1\").IPAddress}}"))
				if a, err := netip.ParseAddr(ip); err != nil || gw.IsValid() && !netip.PrefixFrom(gw, 24).Masked().Contains(a) {
					t.Errorf("web's address on n1: %q", ip)
				}
				if out := d.ok("ps", "--filter", "network=n1", "--format", "{{.Names}}"); !strings.Contains(out, "web") || !strings.Contains(out, "late") {
					t.Errorf("ps --filter network=n1: %q", out)
				}
				out := d.ok("network", "inspect", "n1", "--format", "{{range .Containers}}{{.Name}} {{end}}")
				if !strings.Contains(out, "web") || !strings.Contains(out, "late") {
					t.Errorf("network inspect n1 containers: %q", out)
				}
				// The run's own network reaches its containers directly: here the host, which is
				// the bridge's gateway, stands in for the run's container.
				if out, err := httpGetText("http://" + ip + "/"); err != nil || out != "hello-web\n" {
					t.Errorf("web from the bridge's gateway: %q, %v", out, err)
				}
				if r := d.run("", "network", "rm", "n1"); r.code == 0 || !strings.Contains(r.stderr, "active endpoints") {
					t.Errorf("network rm of a network in use: %+v", r)
				}
				d.ok("rm", "-f", "web", "late", "watcher")
				d.ok("network", "rm", "n1")
				if r := d.run("", "run", "--rm", "--network", "host", "busybox", "true"); r.code == 0 || !strings.Contains(r.stderr, "network host") {
					t.Errorf("--network host: %+v", r)
				}
				// 404 as Docker's (the CLI then tries a pull, and shows the error of the create after it).
				r := httpDo(t, eng.sock, "POST", "/v1.44/containers/create", "application/json",
					strings.NewReader(`{"Image":"busybox","HostConfig":{"NetworkMode":"nonesuch"}}`))
				if r.code != 404 || !strings.Contains(r.body, "network nonesuch not found") {
					t.Errorf("an unknown network: %+v", r)
				}
			})
			t.Run("the run's rules hold", func(t *testing.T) {
				d.t = t
				for what, url := range map[string]string{
					"the host's service at the gateway": fmt.Sprintf("http://%s:%d/", gw, hostPort),
					"another run":                       "http://" + otherIP + ":8080/",
					"the metadata address":              "http://169.254.169.254/",
				} {
					r := d.run("", append([]string{"run", "--rm", "busybox"}, engnetFetch(url)...)...)
					// A failure of wget (1) or its timeout (143): not a crash.
					if (r.code != 1 && r.code != 143) || strings.Contains(r.stdout, "host-secret") || strings.Contains(r.stdout, "other-run") {
						t.Errorf("a container reached %s (%s): %+v", what, url, r)
					}
				}
				// The other run is up and serving: it is the rule that stops the container.
				if out, err := httpGetText("http://" + otherIP + ":8080/"); err != nil || out != "other-run\n" {
					t.Errorf("the other run does not serve: %q, %v", out, err)
				}
			})
			t.Run("published ports", func(t *testing.T) {
				d.t = t
				d.ok("run", "-d", "-p", "8080:80", "--name", "pub", "busybox", "sh", "-c",
					"mkdir -p /w && echo hello-pub > /w/index.html && httpd -f -p 80 -h /w")
				d.ok("run", "-d", "-P", "--expose", "81", "--name", "pubany", "busybox", "sh", "-c",
					"mkdir -p /w && echo hello-any > /w/index.html && httpd -f -p 81 -h /w")
				ports := cni.PortsAddr(netip.PrefixFrom(gw, 24).Masked())
				if out := d.ok("port", "pub"); out != "80/tcp -> "+ports.String()+":8080\n" {
					t.Errorf("docker port pub: %q (want 80/tcp -> %s:8080)", out, ports)
				}
				anyOut := strings.TrimSpace(d.ok("port", "pubany", "81/tcp"))
				ap, err := netip.ParseAddrPort(anyOut)
				if err != nil || ap.Addr() != ports || ap.Port() < 32768 || ap.Port() > 60999 {
					t.Fatalf("docker port pubany 81/tcp: %q", anyOut)
				}
				for url, want := range map[string]string{
					"http://" + ports.String() + ":8080/": "hello-pub\n",
					"http://" + ap.String() + "/":         "hello-any\n",
				} {
					// From a container on the engine's network, and from the host (the bridge's gateway).
					if out := d.retry(append([]string{"run", "--rm", "busybox"}, engnetFetch(url)...)...); out != want {
						t.Errorf("%s from a container: %q", url, out)
					}
					if out, err := httpGetText(url); err != nil || out != want {
						t.Errorf("%s from the host: %q, %v; logs of pubany: %+v", url, out, err, d.run("", "logs", "pubany"))
					}
				}
				if out := d.ok("ps", "--filter", "name=pub$", "--format", "{{.Ports}}"); !strings.Contains(out, ports.String()+":8080->80/tcp") {
					t.Errorf("ps ports: %q", out)
				}
				// --add-host: host-gateway is the ports address, where pub answers.
				out := d.ok("run", "--rm", "--add-host", "db.local:10.1.2.3", "--add-host", "host.docker.internal:host-gateway", "busybox", "sh", "-c",
					"cat /etc/hosts; timeout 10 wget -O /tmp/o http://host.docker.internal:8080/ 2>/dev/null && cat /tmp/o")
				if !strings.Contains(out, "10.1.2.3\tdb.local\n") || !strings.Contains(out, ports.String()+"\thost.docker.internal\n") || !strings.Contains(out, "hello-pub\n") {
					t.Errorf("--add-host: %q", out)
				}
				if r := d.run("", "run", "--rm", "--add-host", "evil\n1.2.3.4 x:1.2.3.4", "busybox", "true"); r.code == 0 || !strings.Contains(r.stderr, "invalid extra host") {
					t.Errorf("--add-host with a newline: %+v", r)
				}
				d.ok("rm", "-f", "pub", "pubany")
				if _, err := httpGetText("http://" + ports.String() + ":8080/"); err == nil {
					t.Errorf("the published port still answers after its container is gone")
				}
			})
			t.Run("events", func(t *testing.T) {
				d.t = t
				out := d.ok("events", "--since", "10m", "--until", fmt.Sprint(time.Now().Unix()+1), "--filter", "type=network", "--format", "{{.Action}} {{.Actor.Attributes.name}}")
				for _, w := range []string{"create n1", "destroy n1"} {
					if !strings.Contains(out, w) {
						t.Errorf("network events lack %q:\n%s", w, out)
					}
				}
			})
			d.ok("run", "-d", "--name", "left", "busybox", "sleep", "600")
			eng.stop(t)
			netEngineNothingLeft(t, runID)

			// kill -9 of an engine, then `moatc clean`: the network goes all the same.
			eng = netEngineStart(t, rt, ns, runID)
			d.ok("run", "-d", "--name", "left2", "busybox", "sleep", "600")
			eng.cmd.Process.Signal(syscall.SIGKILL)
			<-eng.done
			eng.stopped = true
			mustRun(t, "clean")
			netEngineNothingLeft(t, runID)
			// The namespace goes with an ephemeral engine's exit.
			eng = netEngineStart(t, rt, ns, runID)
			eng.stop(t)
			netEngineNothingLeft(t, runID)
		})
	}
}

// netEngineStart starts `moatc _engine --ephemeral` of run runID with the network.
func netEngineStart(t *testing.T, rt, ns, runID string) *engineProc {
	t.Helper()
	args := append([]string{"--namespace", ns, "--image", "busybox", "--run-id", runID, "--ephemeral"}, sandboxArgs(rt)...)
	return launchEngine(t, filepath.Join(home, "engnet-"+rt+".sock"), args...)
}

// netEngineNothingLeft checks that no netns, bridge, veth, rule or lease of run runID is left.
func netEngineNothingLeft(t *testing.T, runID string) {
	t.Helper()
	for _, c := range [][]string{{"ip", "netns", "list"}, {"ip", "-o", "link"}, {"iptables-save"}} {
		out, err := execOutput(c[0], c[1:]...)
		if err != nil {
			t.Fatalf("%v: %v", c, err)
		}
		if strings.Contains(out, runID) {
			t.Errorf("%v still shows run %s:\n%s", c, runID, out)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "cni", "state", "runs", runID)); !os.IsNotExist(err) {
		t.Errorf("the network state of run %s is left: %v", runID, err)
	}
	if _, err := os.Stat(filepath.Join(home, "cni", "state", "ipam", "moatc-"+runID)); !os.IsNotExist(err) {
		t.Errorf("the leases of run %s are left: %v", runID, err)
	}
}

// retry runs the CLI until it succeeds (a server just started may not listen yet), up to 10 s.
func (d *dockerCLI) retry(args ...string) string {
	d.t.Helper()
	var r result
	for i := 0; i < 10; i++ {
		if r = d.run("", args...); r.code == 0 {
			return r.stdout
		}
		time.Sleep(time.Second)
	}
	d.t.Errorf("docker %v: %+v", args, r)
	return r.stdout
}

// engnetFetch is a busybox command printing what url serves, giving up after 5 s. (This
// busybox's wget crashes with -O-, -q or -T here: none is used.)
func engnetFetch(url string) []string {
	return []string{"sh", "-c", "timeout 5 wget -O /tmp/o " + url + " 2>/dev/null && cat /tmp/o"}
}

func httpGetText(url string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
