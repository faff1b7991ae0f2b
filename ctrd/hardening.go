package ctrd

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/contrib/apparmor"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	aa "github.com/containerd/containerd/v2/pkg/apparmor"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Every container moatc makes is at least as tight as Docker's default. containerd's default
// spec already brings Docker's capability set (14 capabilities; no CAP_SYS_ADMIN, so no
// mount), the masked /proc and /sys paths and the read-only /proc ones; moatc adds what it
// leaves out: the default seccomp profile and no_new_privs, on both runtimes.
func hardening() []oci.SpecOpts {
	return []oci.SpecOpts{
		// A setuid binary or file capability cannot raise privileges inside the container.
		oci.WithNoNewPrivileges,
		// containerd's port of Docker's default profile: no keyctl, add_key, unshare of
		// namespaces, mount, bpf, ptrace of others, ... (it reads the capabilities set above).
		seccomp.WithDefaultProfile(),
	}
}

// AppArmorProfile is the profile runc containers get where the host has AppArmor.
const AppArmorProfile = "moatc-default"

// runcHardening is what only runc needs: AppArmor confines the host kernel's view, so it is
// meaningless under gVisor, whose Sentry is the kernel the workload sees. Rootless, the
// profile is left out: loading one needs the host's root, and runc fails on a missing one.
func runcHardening(c Container) []oci.SpecOpts {
	if c.Rootless || !aa.HostSupports() {
		return nil
	}
	return []oci.SpecOpts{apparmor.WithDefaultProfile(AppArmorProfile)}
}

// gvisorHardening adapts the common hardening to gVisor.
func gvisorHardening(c Container) []oci.SpecOpts {
	opts := []oci.SpecOpts{func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
		// The profile answers clone3 with ENOSYS so that glibc falls back to clone, whose
		// flags it can filter; runsc ignores errnoRet and would answer EPERM, which makes every
		// pthread_create fail. Inside gVisor clone3 meets the Sentry, not the host kernel, and
		// without CAP_SYS_ADMIN it can make no namespace but a user one the Sentry keeps.
		if s.Linux == nil || s.Linux.Seccomp == nil {
			return nil
		}
		s.Linux.Seccomp.Syscalls = slices.DeleteFunc(s.Linux.Seccomp.Syscalls, func(sc specs.LinuxSyscall) bool {
			return sc.Action == specs.ActErrno && slices.Equal(sc.Names, []string{"clone3"})
		})
		s.Linux.Seccomp.Syscalls = append(s.Linux.Seccomp.Syscalls, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActAllow})
		// runsc drops the names its Sentry does not know (fchmodat2, ...), so the profile's
		// default answered them with EPERM, not the Sentry's ENOSYS: programs that fall back
		// on ENOSYS (the Docker CLI's cp, glibc's lchmod) failed. Denying every Linux name
		// after the profile's rules (runsc takes the first rule that matches) and allowing by
		// default keeps each call the Sentry has as the profile says, and lets the Sentry answer
		// the ones it has not.
		gvisorDefaultDeny(s.Linux.Seccomp)
		return nil
	}}
	if c.Pids > 0 {
		// The Sentry enforces RLIMIT_NPROC on the workload's processes (one sandbox per run, so
		// per-uid is per-run; root is not exempt without CAP_SYS_RESOURCE, which it lacks).
		// runsc puts the spec's pids limit on the sandbox's host cgroup instead, where it
		// counts the Sentry's own threads and systrap's stub processes: at the workload's limit
		// the whole sandbox dies, so the host limit is only a backstop with room for those.
		// Rootless there is no host cgroup, and the rlimit alone holds the workload.
		n := uint64(c.Pids)
		opts = append(opts, oci.WithRlimit(&specs.POSIXRlimit{Type: "RLIMIT_NPROC", Hard: n, Soft: n}))
		if !c.Rootless {
			opts = append(opts, oci.WithPidsLimit(2*c.Pids+512))
		}
	}
	return opts
}

// capabilities are the names the kernel knows (capability.h), without CAP_.
var capabilities = []string{"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
	"SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN",
	"SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE",
	"AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND",
	"AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE"}

// ParseCapability turns NET_ADMIN, net_admin or CAP_NET_ADMIN into CAP_NET_ADMIN.
func ParseCapability(s string) (string, error) {
	n := strings.TrimPrefix(strings.ToUpper(strings.TrimSpace(s)), "CAP_")
	if !slices.Contains(capabilities, n) {
		return "", fmt.Errorf("%q is not a Linux capability: write a name such as NET_ADMIN or SYS_PTRACE (see capabilities(7))", s)
	}
	return "CAP_" + n, nil
}

// gvisorDefaultDeny turns profile p's errno default into an explicit rule, last, for every
// Linux system call name, with allow as the default (see gvisorHardening).
func gvisorDefaultDeny(p *specs.LinuxSeccomp) {
	if p.DefaultAction != specs.ActErrno {
		return
	}
	p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{Names: slices.Clone(linuxSyscalls), Action: specs.ActErrno, ErrnoRet: p.DefaultErrnoRet})
	p.DefaultAction, p.DefaultErrnoRet = specs.ActAllow, nil
}
