package kube

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	apievents "github.com/containerd/containerd/api/events"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/typeurl/v2"
	"github.com/vishvananda/netlink"
)

// The pod network: one bridge of this cluster's own, outside moatc's 10.213.0.0/16.
const (
	bridgeName = "mkube0"
	podSubnet  = "10.244.7.0/24"
	podGateway = "10.244.7.1"
	cniNetwork = "mkube" // the CNI network name; libcni's cache files under /var/lib/cni carry it
	// pauseImage is the CRI's pinned sandbox image: imported at start, so never pulled.
	pauseImage   = "localhost/moatc-kube/pause:1"
	criNamespace = "k8s.io"
)

// makeBridge makes the pod bridge with the gateway address. The bridge plugin then runs with
// isGateway off, because with it on the plugin turns on net.ipv4.ip_forward for the whole
// host. Pods need no forwarding: they reach the host at the gateway, and nothing beyond it.
func makeBridge() error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("adding bridge %s: %w", bridgeName, err)
	}
	addr, err := netlink.ParseAddr(podGateway + "/24")
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("addressing bridge %s: %w", bridgeName, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("bringing up bridge %s: %w", bridgeName, err)
	}
	return nil
}

// startContainerd writes the configuration of the cluster's own containerd (CRI on, its own
// root, state and sockets, so moatc's managed containerd is not disturbed) and starts it.
func (c *cluster) startContainerd(ctx context.Context) error {
	c.Containerd = c.path("c.sock")
	files := map[string]string{
		c.path("containerd.toml"):          c.containerdConfig(),
		c.path("runsc.toml"):               c.runscConfig(),
		c.path("cni", "10-mkube.conflist"): c.cniConfig(),
		// containerd's hosts.toml for the registry: plain HTTP.
		c.path("certs.d", c.Registry, "hosts.toml"): fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n",
			"http://"+c.Registry, "http://"+c.Registry),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	_, err := c.spawn("containerd", prefixBin("containerd"), "--config", c.path("containerd.toml"))
	return err
}

// containerdConfig: runc (cgroupfs) by default and runtime handler gvisor through moatc's
// shim; restrict_oom_score_adj because these machines lack CAP_SYS_RESOURCE (see
// kubernetes.md); network namespaces under the state directory rather than /run/netns; NRI
// off, since its socket is host-wide.
func (c *cluster) containerdConfig() string {
	q := strconv.Quote
	rt := `plugins."io.containerd.cri.v1.runtime"`
	return `version = 3
root = ` + q(c.path("containerd", "root")) + `
state = ` + q(c.path("containerd", "state")) + `
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = ` + q(c.Containerd) + `

[ttrpc]
  address = ` + q(c.Containerd+".ttrpc") + `

[plugins."io.containerd.internal.v1.opt"]
  path = ` + q(c.path("containerd", "opt")) + `

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = ` + q(pauseImage) + `
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = ` + q(c.path("certs.d")) + `

[` + rt + `]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [` + rt + `.containerd]
    default_runtime_name = "runc"
    [` + rt + `.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [` + rt + `.containerd.runtimes.runc.options]
        BinaryName = ` + q(prefixBin("runc")) + `
        Root = ` + q(c.path("runc")) + `
        SystemdCgroup = false
    [` + rt + `.containerd.runtimes.gvisor]
      runtime_type = "io.containerd.runsc.v1"
      [` + rt + `.containerd.runtimes.gvisor.options]
        TypeUrl = "io.containerd.runsc.v1.options"
        ConfigPath = ` + q(c.path("runsc.toml")) + `
  [` + rt + `.cni]
    bin_dirs = [` + q(cniBinDir) + `]
    conf_dir = ` + q(c.path("cni")) + `
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`
}

// runscConfig is what moatc's shim passes to runsc: its state root in the cluster's
// directory (the shim adds the namespace), systrap, and gVisor's own network stack.
func (c *cluster) runscConfig() string {
	return fmt.Sprintf("binary_name = %q\nroot = %q\n\n[runsc_config]\n  network = \"sandbox\"\n  platform = \"systrap\"\n",
		prefixBin("runsc"), c.runscRoot())
}

// runscRoot is short: runsc's control socket, ROOT/k8s.io/runsc-<64 hex>.sock, must fit in
// 108 bytes, or runsc puts it in /var/run.
func (c *cluster) runscRoot() string { return c.path("r") }

// cniConfig is the bridge plugin on the pre-made bridge with host-local IPAM keeping its
// leases in the cluster's directory. No ipMasq: it would add NAT rules, and under gVisor
// its DEL cannot find them again (see runtime-stack.md).
func (c *cluster) cniConfig() string {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       cniNetwork,
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      bridgeName,
			"isGateway":   false,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"dataDir": c.path("ipam"),
				"ranges":  [][]map[string]string{{{"subnet": podSubnet, "gateway": podGateway}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
			},
		}},
	}
	b, _ := json.MarshalIndent(conf, "", "  ")
	return string(b)
}

// waitContainerd waits for containerd to serve, and fails when its CRI plugins did not load
// (a configuration error would otherwise surface only as a kubelet that never gets Ready).
func (c *cluster) waitContainerd(ctx context.Context) error {
	d := c.daemons["containerd"]
	return waitUntil(ctx, "containerd's CRI plugin", d, func(ctx context.Context) error {
		client, err := containerd.New(c.Containerd, containerd.WithTimeout(time.Second))
		if err != nil {
			return err
		}
		defer client.Close()
		resp, err := client.IntrospectionService().Plugins(ctx)
		if err != nil {
			return err
		}
		found := false
		for _, p := range resp.Plugins {
			cri := strings.HasPrefix(p.Type, "io.containerd.cri.v1") || (p.Type == "io.containerd.grpc.v1" && p.ID == "cri")
			if !cri {
				continue
			}
			found = true
			if p.InitErr != nil {
				return fmt.Errorf("plugin %s.%s failed: %s", p.Type, p.ID, p.InitErr.Message)
			}
		}
		if !found {
			return errors.New("no CRI plugin loaded")
		}
		return nil
	})
}

// recordContainers writes the id of every container the cluster's containerd makes to
// DIR/containers, for cleanHost: what is named after a container outside the directory
// cannot be found otherwise. moatc's gVisor shim leaves its socket in /run/containerd/s
// (named by a hash of containerd's address, the namespace and the id), and a sandbox that
// never got its CNI DEL (a killed run) leaves libcni's cache entry of its loopback.
func (c *cluster) recordContainers(ctx context.Context) error {
	client, err := containerd.New(c.Containerd)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(c.path("containers"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		client.Close()
		return err
	}
	// Not ctx: the watch lasts until containerd stops.
	events, errs := client.Subscribe(context.Background(), `topic=="/containers/create"`)
	go func() {
		defer client.Close()
		defer f.Close()
		for {
			select {
			case env := <-events:
				ev, err := typeurl.UnmarshalAny(env.Event)
				if cc, ok := ev.(*apievents.ContainerCreate); ok && err == nil && env.Namespace == criNamespace {
					fmt.Fprintln(f, cc.ID)
				}
			case <-errs:
				return
			}
		}
	}()
	return nil
}

// shimSocket is where a shim of the containerd at address listens for container id of the
// CRI's namespace (containerd's shim.SocketAddress).
func shimSocket(address, id string) string {
	return fmt.Sprintf("%s/%x", shimSocketDir, sha256.Sum256([]byte(filepath.Join(address, criNamespace, id))))
}

const shimSocketDir = "/run/containerd/s"

// importPause packs the pause binary built by kube-setup.sh as a one-layer image and imports
// it into the CRI's namespace under the pinned sandbox image name.
func (c *cluster) importPause(ctx context.Context) error {
	img, err := pauseImageOf(kubeBin("pause"))
	if err != nil {
		return fmt.Errorf("packing the pause image: %w", err)
	}
	tarPath := c.path("pause.oci.tar")
	if err := writeOCITar(img, pauseImage, tarPath); err != nil {
		return fmt.Errorf("writing the pause image: %w", err)
	}
	_, err = commandOutput(ctx, prefixBin("ctr"), "-a", c.Containerd, "-n", criNamespace, "images", "import", tarPath)
	return err
}

// startKubelet writes the kubelet's configuration and starts it. Everything the kubelet lets
// us move goes into the cluster's directory; host_test.go cleans up the rest.
func (c *cluster) startKubelet(ctx context.Context) error {
	resolv := c.path("resolv.conf")
	// No cluster DNS: pods get a resolver that answers nothing rather than the host's.
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		return err
	}
	b, err := json.MarshalIndent(c.kubeletConfig(resolv), "", "  ")
	if err != nil {
		return err
	}
	cfg := c.path("kubelet.yaml") // JSON is YAML
	if err := os.WriteFile(cfg, b, 0o644); err != nil {
		return err
	}
	_, err = c.spawn("kubelet", kubeBin("kubelet"), flags(
		"config", cfg,
		"kubeconfig", c.path("kubelet.kubeconfig"),
		"root-dir", c.path("kubelet"),
		"cert-dir", c.path("kubelet", "pki"),
		"hostname-override", nodeName,
		"v", "2",
	)...)
	return err
}

// kubeletConfig is the KubeletConfiguration (kubelet.config.k8s.io/v1beta1). Thresholds are
// low so a shared, fuller disk neither evicts pods nor collects images mid-test.
func (c *cluster) kubeletConfig(resolv string) map[string]any {
	pki := c.path("pki") + "/"
	return map[string]any{
		"apiVersion":               "kubelet.config.k8s.io/v1beta1",
		"kind":                     "KubeletConfiguration",
		"failCgroupV1":             false, // these machines are cgroup v1 (hybrid)
		"cgroupDriver":             "cgroupfs",
		"failSwapOn":               false,
		"containerRuntimeEndpoint": "unix://" + c.Containerd,
		"address":                  "127.0.0.1",
		"port":                     c.ports.kubelet,
		"readOnlyPort":             0,
		"healthzPort":              0,
		"tlsCertFile":              pki + "kubelet-serving.crt",
		"tlsPrivateKeyFile":        pki + "kubelet-serving.key",
		"authentication": map[string]any{
			"anonymous": map[string]any{"enabled": false},
			"webhook":   map[string]any{"enabled": false},
			"x509":      map[string]any{"clientCAFile": pki + "ca.crt"},
		},
		"authorization":          map[string]any{"mode": "Webhook"},
		"resolvConf":             resolv,
		"podLogsDir":             c.path("pod-logs"),
		"volumePluginDir":        c.path("kubelet", "volume-plugins"),
		"makeIPTablesUtilChains": false,
		"cpuManagerPolicy":       "none",
		"serializeImagePulls":    false,
		// Reported at once when it changes: node Ready, and so the start, comes sooner.
		"nodeStatusUpdateFrequency":   "2s",
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		"evictionHard": map[string]string{
			"memory.available":   "50Mi",
			"nodefs.available":   "1%",
			"nodefs.inodesFree":  "1%",
			"imagefs.available":  "1%",
			"imagefs.inodesFree": "1%",
		},
	}
}

const cniBinDir = "/usr/lib/cni"
