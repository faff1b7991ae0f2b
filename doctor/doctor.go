// Package doctor checks each part of the stack moatc needs and says how to fix what fails.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/grant"
	"github.com/moatc/moatc/proxy"
	"github.com/moatc/moatc/rootless"
	"github.com/moatc/moatc/snapshot"
)

// Check is one line of the report.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Optional checks (such as /dev/kvm) inform but never fail the report.
	Optional bool `json:"optional,omitempty"`
}

// Options say where the stack is.
type Options struct {
	Prefix string
	Conn   ctrd.Options
	// Runtimes to probe with a container, e.g. gVisor and runc.
	Runtimes []ctrd.Runtime
	Home     string // moatc's home: its proxy CA and credential store are checked
}

// Run performs every check, in order. For a user who is not root, the rootless prerequisites
// come first.
func Run(ctx context.Context, o Options) []Check {
	var out []Check
	add := func(c ...Check) { out = append(out, c...) }

	nonRoot := rootless.Enabled()
	if nonRoot {
		add(Rootless(o.Home)...)
	}
	add(binary(o.Prefix, "containerd", setupFix))
	cl, c := containerdCheck(ctx, o, nonRoot)
	if cl != nil {
		defer cl.Close()
	}
	add(c)
	for _, rt := range o.Runtimes {
		for _, b := range rt.Binaries() {
			add(binary(o.Prefix, b, setupFix))
		}
		p := probeCheck(ctx, cl, rt)
		if cl == nil && c.Optional {
			p.Optional, p.Fix, p.Detail = true, "", "not run: containerd is not running"
		}
		add(p)
	}
	add(cniCheck(o.Prefix))
	add(binary(o.Prefix, "buildkitd", setupFix))
	add(kernelChecks(!nonRoot)...)
	if o.Home != "" {
		add(homeChecks(o.Home)...)
	}
	add(kvmCheck())
	return out
}

// rootOnly returns the error of connecting to a containerd socket that this user may not use.
func rootOnly(address string) error {
	if address == "" {
		return nil
	}
	conn, err := net.DialTimeout("unix", address, time.Second)
	if err == nil {
		conn.Close()
		return nil
	}
	if errors.Is(err, fs.ErrPermission) {
		return err
	}
	return nil
}

const setupFix = "run `make setup` as root in the moatc source tree"

// containerdCheck connects to containerd; the client is nil when that failed. A non-root
// user's managed daemon is the rootless one, which `moatc system start` starts: doctor does
// not start it (a daemon started the rootful way would only fail).
func containerdCheck(ctx context.Context, o Options, nonRoot bool) (*ctrd.Client, Check) {
	if nonRoot && o.Conn.Address == "" && (o.Conn.Daemon == nil || !o.Conn.Daemon.Answering()) {
		return nil, Check{Name: "containerd reachable", Optional: true, Detail: "moatc's rootless containerd is not running: `moatc system start` starts it"}
	}
	if nonRoot {
		if err := rootOnly(o.Conn.Address); err != nil {
			return nil, Check{Name: "containerd reachable", Detail: err.Error() + ": that is a rootful containerd, which a non-root user cannot use",
				Fix: "drop --address (and MOATC_CONTAINERD_ADDRESS) so moatc uses its own rootless containerd, or run moatc as root"}
		}
	}
	cl, err := ctrd.Connect(ctx, o.Conn)
	if err != nil {
		return nil, Check{Name: "containerd reachable", Detail: err.Error(), Fix: "see the error; `moatc system status` shows the daemon"}
	}
	v, err := cl.Version(ctx)
	if err != nil {
		return cl, Check{Name: "containerd reachable", Detail: err.Error(), Fix: "restart it: moatc system stop && moatc system start"}
	}
	return cl, Check{Name: "containerd reachable", OK: true, Detail: fmt.Sprintf("%s at %s", v.Version, cl.Address)}
}

// probeCheck runs a busybox container under rt.
func probeCheck(ctx context.Context, cl *ctrd.Client, rt ctrd.Runtime) Check {
	c := Check{Name: "probe run under " + rt.Name()}
	switch {
	case rt.Check() != nil:
		c.Detail, c.Fix = "binaries missing", setupFix
	case cl == nil:
		c.Detail, c.Fix = "containerd is not reachable", "fix containerd first"
	default:
		img, err := cl.Image(ctx, "busybox", snapshot.Default())
		if err != nil {
			c.Detail, c.Fix = err.Error(), "make base-images"
			break
		}
		if err := cl.Probe(ctx, rt, img, snapshot.Default()); err != nil {
			c.Detail, c.Fix = errors.Unwrap(err).Error(), setupFix
			break
		}
		c.OK, c.Detail = true, "a busybox container ran and exited 0"
	}
	return c
}

func cniCheck(prefix string) Check {
	cni := filepath.Join(prefix, "lib", "cni")
	var missing []string
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap", "firewall"} {
		if _, err := os.Stat(filepath.Join(cni, p)); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return Check{Name: "CNI plugins", Detail: fmt.Sprintf("missing in %s: %s", cni, strings.Join(missing, ", ")), Fix: setupFix + " (Debian package containernetworking-plugins)"}
	}
	return Check{Name: "CNI plugins", OK: true, Detail: cni}
}

// Rootless is the report's lines for the rootless prerequisites (package rootless) of this
// user and moatc home ("" means $MOATC_HOME or ~/.moatc).
func Rootless(home string) []Check {
	var rs []rootless.Result
	if home == "" {
		rs = rootless.Check()
	} else {
		rs = rootless.CheckHome(home)
	}
	var out []Check
	for _, r := range rs {
		out = append(out, Check{Name: "rootless: " + r.Name, OK: r.OK, Detail: r.Detail, Fix: r.Fix})
	}
	return out
}

// kernelChecks; userns is left out for a non-root user, whose rootless checks test it better.
func kernelChecks(userns bool) []Check {
	var out []Check
	add := func(c Check) { out = append(out, c) }
	add(kernel("overlayfs", func() (bool, string) {
		b, _ := os.ReadFile("/proc/filesystems")
		return strings.Contains(string(b), "overlay"), "overlay in /proc/filesystems"
	}, "load the overlay module: modprobe overlay (or set MOATC_SNAPSHOTTER=native)"))
	add(kernel("cgroups", func() (bool, string) {
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
			return true, "cgroup v2"
		}
		if _, err := os.Stat("/sys/fs/cgroup/memory"); err == nil {
			return true, "cgroup v1 (deprecated by containerd; works)"
		}
		return false, "no cgroup hierarchy at /sys/fs/cgroup"
	}, "mount cgroups at /sys/fs/cgroup"))
	if !userns {
		return out
	}
	add(kernel("user namespaces", func() (bool, string) {
		b, err := os.ReadFile("/proc/sys/user/max_user_namespaces")
		n := strings.TrimSpace(string(b))
		return err == nil && n != "0", "max_user_namespaces=" + n
	}, "sysctl user.max_user_namespaces=15000"))
	return out
}

// homeChecks checks the proxy CA and the credential store of a moatc home.
func homeChecks(home string) []Check {
	ca := Check{Name: "proxy CA", OK: true, Detail: filepath.Join(home, "proxy", "ca.pem")}
	if err := proxy.CheckCA(filepath.Join(home, "proxy")); err != nil {
		ca.OK, ca.Detail, ca.Fix = false, err.Error(), "see the error; runs with a network cannot start until it is fixed"
	} else if _, err := os.Stat(ca.Detail); err != nil {
		ca.Detail = "not made yet: the first run with a network makes it"
	}
	st := Check{Name: "credential store", OK: true, Detail: filepath.Join(home, "grants.json")}
	if err := grant.Open(home).Check(); err != nil {
		st.OK, st.Detail, st.Fix = false, err.Error(), "see the error; `moatc grant list` shows what is stored"
	} else if gs, err := grant.Open(home).List(); err == nil {
		st.Detail = fmt.Sprintf("%d grant(s) in %s", len(gs), st.Detail)
	}
	return []Check{ca, st}
}

func kvmCheck() Check {
	kvm := Check{Name: "/dev/kvm", Optional: true}
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		kvm.OK, kvm.Detail = true, "usable: --sandbox-platform kvm is available"
	} else {
		kvm.Detail = fmt.Sprintf("not usable (%v): gVisor uses systrap", err)
	}
	return kvm
}

func binary(prefix, name, fix string) Check {
	c := Check{Name: name}
	path, version, err := ctrd.BinaryVersion(prefix, name)
	if err != nil {
		c.Detail, c.Fix = "not found in "+filepath.Join(prefix, "bin")+" or PATH", fix
		return c
	}
	c.OK, c.Detail = true, version+" ("+path+")"
	return c
}

func kernel(name string, test func() (bool, string), fix string) Check {
	ok, detail := test()
	c := Check{Name: "kernel: " + name, OK: ok, Detail: detail}
	if !ok {
		c.Fix = fix
	}
	return c
}

// Failed reports whether any required check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if !c.OK && !c.Optional {
			return true
		}
	}
	return false
}
