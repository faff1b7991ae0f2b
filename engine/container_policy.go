package engine

import (
	"fmt"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
)

// A container made through the engine never gets more than a run itself: whatever would
// reach the host (its namespaces, devices, capabilities beyond Docker's default set, an
// unconfined seccomp or AppArmor profile, sysctls) is refused with 403 and says so. Features
// the engine does not have yet are 501.

// defaultCaps is Docker's default capability set: adding one of these changes nothing.
var defaultCaps = []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}

// checkHostConfig refuses what the engine must not or cannot do, and returns warnings for
// what it accepts but does not apply.
func checkHostConfig(hc *container.HostConfig, cfg *container.Config) (warnings []string, err error) {
	refuse := func(what string) error {
		return forbidden("moatc refuses %s: containers started through its engine get no more access to the host than the run itself", what)
	}
	switch {
	case hc.Privileged:
		return nil, refuse("--privileged")
	case hc.PidMode.IsHost(), hc.IpcMode.IsHost(), hc.UTSMode.IsHost(), hc.UsernsMode.IsHost(), hc.CgroupnsMode.IsHost():
		return nil, refuse("sharing a host namespace (--pid, --ipc, --uts, --userns or --cgroupns host)")
	case hc.NetworkMode == network.NetworkHost:
		return nil, refuse("--network host")
	case len(hc.Devices) > 0 || len(hc.DeviceRequests) > 0 || len(hc.DeviceCgroupRules) > 0:
		return nil, refuse("host devices (--device, --gpus, --device-cgroup-rule)")
	case len(hc.Sysctls) > 0:
		return nil, refuse("--sysctl")
	case hc.MaskedPaths != nil || hc.ReadonlyPaths != nil:
		return nil, refuse("changing the masked or read-only paths of /proc and /sys (systempaths=unconfined)")
	case hc.CgroupParent != "" || hc.Cgroup != "":
		return nil, refuse("choosing the container's cgroup (--cgroup-parent)")
	}
	for _, c := range hc.CapAdd {
		n := strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		if !slices.Contains(defaultCaps, n) {
			return nil, refuse(fmt.Sprintf("--cap-add %s (only Docker's default capabilities are given)", c))
		}
	}
	for _, o := range hc.SecurityOpt {
		k, v, _ := strings.Cut(strings.ReplaceAll(o, ":", "="), "=")
		switch {
		case k == "no-new-privileges" && (v == "" || v == "true"):
			// Every container has it already.
		case (k == "seccomp" || k == "apparmor" || k == "systempaths") && v == "unconfined", k == "label" && v == "disable":
			return nil, refuse("--security-opt " + o)
		default:
			return nil, notImplemented("moatc does not support --security-opt %s yet", o)
		}
	}
	switch {
	case len(hc.CapDrop) > 0:
		return nil, notImplemented("moatc does not support --cap-drop yet")
	case len(hc.Binds) > 0 || len(hc.Mounts) > 0 || len(hc.VolumesFrom) > 0 || hc.VolumeDriver != "":
		return nil, notImplemented("moatc does not support bind mounts and volumes (-v, --mount, --volumes-from) yet")
	case len(hc.Links) > 0:
		return nil, notImplemented("moatc does not support --link")
	case hc.NetworkMode.IsContainer() || hc.PidMode.IsContainer() || hc.IpcMode.IsContainer():
		return nil, notImplemented("moatc does not support sharing another container's namespaces (container:NAME) yet")
	case hc.Runtime != "":
		return nil, notImplemented("moatc does not support --runtime: every container of its engine runs under the run's runtime")
	}
	// The network mode names a network: create checks it (networkMounts).
	if !hc.RestartPolicy.IsNone() {
		warnings = append(warnings, fmt.Sprintf("moatc does not apply restart policies yet: --restart %s is ignored", hc.RestartPolicy.Name))
	}
	if len(hc.DNS) > 0 || len(hc.DNSSearch) > 0 || len(hc.DNSOptions) > 0 || len(hc.ExtraHosts) > 0 {
		warnings = append(warnings, "moatc's engine gives containers no network yet: --dns and --add-host are ignored")
	}
	if cfg.Healthcheck != nil && len(cfg.Healthcheck.Test) > 0 && cfg.Healthcheck.Test[0] != "NONE" {
		warnings = append(warnings, "moatc does not run health checks yet")
	}
	return warnings, nil
}
