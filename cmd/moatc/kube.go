package main

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/kube"
)

func kubeCommand() *cli.Command {
	return &cli.Command{
		Name:  "kube",
		Usage: "run on a Kubernetes cluster: the same run, in a gVisor pod, its grants in a proxy pod",
		Description: `A cluster run is the run 'moatc run' would make, on the cluster of the current kubeconfig:
the workload in a pod of RuntimeClass gvisor (--runtime-class), its workspace copied in and
its changes copied back, its grants held by a proxy pod that alone mounts them.
See docs/kubernetes.md.`,
		Subcommands: []*cli.Command{kubeRunCommand(), kubeExportCommand()},
	}
}

// clusterFlags choose the cluster. -n is the namespace, as in kubectl (run's --name has no
// short form here).
func clusterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "kubeconfig", Usage: "kubeconfig `FILE` (default $KUBECONFIG, else ~/.kube/config)"},
		&cli.StringFlag{Name: "context", Usage: "the kubeconfig's `CONTEXT` (default its current one)"},
		&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Usage: "`NAMESPACE` of the run's objects (default the context's, else default)"},
		&cli.StringFlag{Name: "runtime-class", Value: kube.DefaultRuntimeClass, Usage: "the pod's RuntimeClass `NAME`: the cluster's gVisor"},
		&cli.StringFlag{Name: "registry", EnvVars: []string{"MOATC_KUBE_REGISTRY"}, Usage: "push the run's images to `HOST[:PORT][/PATH]`, a registry the cluster pulls from (auth from ~/.docker/config.json)"},
		&cli.StringSliceFlag{Name: "insecure-registry", Usage: "speak plain HTTP to registry `HOST[:PORT]` (loopback ones always are); repeatable"},
	}
}

// kubeRunFlags are run's flags, but -n, and the cluster's.
func kubeRunFlags() []cli.Flag {
	var flags []cli.Flag
	for _, f := range runFlags(false) {
		if sf, ok := f.(*cli.StringFlag); ok && sf.Name == "name" {
			c := *sf
			c.Aliases = nil
			f = &c
		}
		flags = append(flags, f)
	}
	return append(flags, clusterFlags()...)
}

func kubeRunCommand() *cli.Command {
	flags := append(kubeRunFlags(),
		&cli.BoolFlag{Name: "keep", Usage: "leave the run's objects on the cluster when it ends ('moatc destroy' removes them)"},
		&cli.BoolFlag{Name: "no-sync-back", Usage: "do not copy the workspace's changes back"})
	return &cli.Command{
		Name:                   "run",
		Usage:                  "run a command on the cluster, as 'moatc run' would here",
		ArgsUsage:              "[PATH] [-- CMD ARGS...]",
		UseShortOptionHandling: true,
		Description: `Runs CMD in a pod of the cluster of the current kubeconfig, under RuntimeClass gvisor. It
takes run's flags and PATH/moatc.yaml, and:
  - pushes the run's image (the dependency image too) and moatc's helper image to --registry;
  - creates the workload pod, a proxy pod and service holding the grants (from a Secret only
    the proxy mounts), and for a strict policy NetworkPolicies that keep the workload to the proxy;
  - copies the workspace into the pod before the workload starts, streams its stdout and stderr
    here (and to 'moatc logs'), and exits with its exit code;
  - copies the workspace's changes back (--no-sync-back: not), then removes what it made (--keep: not).
Ctrl-C stops the pod. Everything is checked before anything is created: the cluster, its
RuntimeClass, the images, the grants.

Examples:
  moatc kube run --registry registry.example:5000 -- make test
  moatc kube run --context prod -n agents --registry reg.internal/moatc -g github ./proj -- ./agent.sh`,
		Flags: flags,
		Action: func(c *cli.Context) error {
			req, err := buildRequest(c, "")
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			ctx, cancel := signalContext(c)
			defer cancel()
			o := kube.Options{
				Target:       kubeTarget(c),
				RuntimeClass: c.String("runtime-class"), Registry: c.String("registry"), Insecure: c.StringSlice("insecure-registry"),
				Keep: c.Bool("keep"), NoSyncBack: c.Bool("no-sync-back"), Stdout: os.Stdout, Stderr: os.Stderr, Warn: os.Stderr,
			}
			if c.Bool("quiet") {
				o.Warn = quietWarnings{}
			}
			r, code, err := kube.Run(ctx, e.mgr, req, o)
			if err != nil {
				return kubeError(err)
			}
			if c.Bool("json") {
				printJSON(r)
			}
			if code != 0 {
				return exitStatus(code)
			}
			return nil
		},
	}
}

func kubeTarget(c *cli.Context) kube.Target {
	return kube.Target{Kubeconfig: c.String("kubeconfig"), Context: c.String("context"), Namespace: c.String("namespace")}
}

func kubeExportCommand() *cli.Command {
	var flags []cli.Flag
	for _, f := range kubeRunFlags() {
		if !slices.Contains(f.Names(), "kubeconfig") && !slices.Contains(f.Names(), "context") && !slices.Contains(f.Names(), "json") {
			flags = append(flags, f)
		}
	}
	flags = append(flags, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "`FORMAT`: yaml (documents) or json (a v1 List)"})
	return &cli.Command{
		Name:                   "export",
		Usage:                  "print the Kubernetes objects of a run, as 'moatc kube run' would create them",
		ArgsUsage:              "[PATH] [-- CMD ARGS...]",
		UseShortOptionHandling: true,
		Description: `Prints the objects of a cluster run of PATH with run's flags: the workload pod, the proxy's
pod, service and Secret, the CA ConfigMap, and for a strict policy the NetworkPolicies. No
cluster is contacted and nothing is pushed. The Secret's grant values and CA key are
redacted: export never prints a secret. Check them with a server-side dry run:
  moatc kube export -- make test | kubectl apply --dry-run=server -f -`,
		Flags: flags,
		Action: func(c *cli.Context) error {
			req, err := buildRequest(c, "")
			if err != nil {
				return err
			}
			e, err := setup(c)
			if err != nil {
				return err
			}
			defer e.mgr.Close()
			objs, notes, err := kube.Export(e.mgr, req, kube.ExportOptions{
				Namespace: c.String("namespace"), RuntimeClass: c.String("runtime-class"), Registry: c.String("registry"), Prefix: e.prefix,
			})
			if err != nil {
				return kubeError(err)
			}
			out, err := kube.Encode(objs.List(), c.String("output"), notes)
			if err != nil {
				return usageError{err}
			}
			_, err = os.Stdout.Write(out)
			return err
		},
	}
}

type quietWarnings struct{}

// Write keeps warnings and drops progress under --quiet.
func (quietWarnings) Write(p []byte) (int, error) {
	if len(p) > 16 && string(p[:16]) == "moatc: warning: " {
		fmt.Fprint(os.Stderr, string(p))
	}
	return len(p), nil
}

// kubeError makes a setting a cluster cannot honour a usage error (exit 2).
func kubeError(err error) error {
	var ue *kube.UnsupportedError
	if errors.As(err, &ue) {
		return usageError{err}
	}
	return err
}
