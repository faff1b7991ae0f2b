package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/moatc/moatc/kube/podconf"
	"github.com/moatc/moatc/policy"
	"github.com/moatc/moatc/proxy"
)

// serveProxy is a cluster run's proxy: moatc's own, with the config moatc wrote into the
// run's Secret. Its trace goes to stdout (the pod's log), values redacted as on the host.
func serveProxy(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading the proxy's config: %w", err)
	}
	var cfg podconf.ProxyConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("reading the proxy's config %s: %w", path, err)
	}
	ca, err := proxy.CAFromPEM([]byte(cfg.CACert), []byte(cfg.CAKey))
	if err != nil {
		return err
	}
	pol := policy.Policy{Strict: cfg.Strict}
	for _, a := range cfg.Allow {
		p, err := policy.ParsePattern(a)
		if err != nil {
			return err
		}
		pol.Allow = append(pol.Allow, p)
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	if cfg.UpstreamCA != "" && !roots.AppendCertsFromPEM([]byte(cfg.UpstreamCA)) {
		return errors.New("the upstream CA in the proxy's config holds no certificate")
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", podconf.ProxyPort))
	if err != nil {
		return err
	}
	px, err := proxy.New(proxy.Config{
		Listener: ln, Secret: cfg.Secret, AnyClient: true, Policy: pol, Credentials: cfg.Credentials,
		Check: checkDestination, CA: ca, RootCAs: roots, Trace: os.Stdout,
		Logf: func(format string, a ...any) { fmt.Fprintf(os.Stderr, "moatc-pod: proxy: "+format+"\n", a...) },
	})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintf(os.Stderr, "moatc-pod: proxy listening on :%d\n", podconf.ProxyPort)
	go func() {
		<-ctx.Done()
		px.Close()
	}()
	return px.Serve(ctx)
}

// checkDestination keeps the workload off what is the pod's own or the cloud's: loopback
// (the proxy itself), link-local (metadata services) and unspecified addresses.
func checkDestination(ap netip.AddrPort) error {
	a := ap.Addr().Unmap()
	if a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() || a.IsUnspecified() || a.IsMulticast() {
		return fmt.Errorf("%s is not reachable from a cluster run", a)
	}
	return nil
}
