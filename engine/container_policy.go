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
	if err := checkMountPolicy(hc); err != nil {
		return nil, err
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
		case k == "no-new-privileges":
			return nil, refuse("--security-opt " + o + ": every container runs with no-new-privileges")
		case (k == "seccomp" || k == "apparmor" || k == "systempaths") && v == "unconfined", k == "label" && v == "disable":
			return nil, refuse("--security-opt " + o)
		default:
			return nil, notImplemented("moatc does not support --security-opt %s yet", o)
		}
	}
	switch {
	case len(hc.Links) > 0:
		return nil, notImplemented("moatc does not support --link")
	case hc.NetworkMode.IsContainer() || hc.PidMode.IsContainer() || hc.IpcMode.IsContainer():
		return nil, notImplemented("moatc does not support sharing another container's namespaces (container:NAME) yet")
	case hc.Runtime != "":
		return nil, notImplemented("moatc does not support --runtime: every container of its engine runs under the run's runtime")
	}
	// The network mode names a network: create checks it (networkMounts).
	if err := checkRestartPolicy(hc); err != nil {
		return nil, err
	}
	if len(hc.DNS) > 0 || len(hc.DNSSearch) > 0 || len(hc.DNSOptions) > 0 {
		warnings = append(warnings, "moatc's engine ignores --dns: containers get the run's resolver")
	}
	if err := checkHealthcheck(cfg.Healthcheck); err != nil {
		return nil, err
	}
	return warnings, nil
}

// checkMountPolicy refuses the mount and process settings that would reach past the run: a
// volume driver other than local, and a negative OOM score (a container the kernel spares
// before the host's own processes). Binds are checked where they are resolved (bind.go).
func checkMountPolicy(hc *container.HostConfig) error {
	if hc.VolumeDriver != "" && hc.VolumeDriver != "local" {
		return notImplemented("moatc does not support volume driver %s: its volumes are local directories", hc.VolumeDriver)
	}
	if hc.OomScoreAdj < 0 {
		return forbidden("moatc refuses --oom-score-adj %d: containers started through its engine cannot be spared by the OOM killer before the host's processes", hc.OomScoreAdj)
	}
	for dst, opts := range hc.Tmpfs {
		if err := checkTmpfsOptions(dst, strings.Split(opts, ",")); err != nil {
			return err
		}
	}
	return nil
}

// capDrop is --cap-drop as capability names: ALL is Docker's whole default set. What is
// also added (--cap-drop ALL --cap-add CHOWN) stays.
func capDrop(hc *container.HostConfig) []string {
	norm := func(c string) string { return "CAP_" + strings.TrimPrefix(strings.ToUpper(c), "CAP_") }
	var drop []string
	for _, c := range hc.CapDrop {
		if strings.EqualFold(c, "ALL") {
			for _, d := range defaultCaps {
				drop = append(drop, "CAP_"+d)
			}
			continue
		}
		drop = append(drop, norm(c))
	}
	return slices.DeleteFunc(drop, func(d string) bool {
		return slices.ContainsFunc(hc.CapAdd, func(a string) bool { return norm(a) == d })
	})
}
