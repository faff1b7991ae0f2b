package rootless

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Ports publishes ports on the host through the kit's port driver (rootlesskit's REST API on
// api.sock, driver "builtin"): rootlesskit's parent process listens on the host and its child
// connects, inside moatc's network namespace, to ChildIP:ChildPort. A listener of moatc's
// own would be inside that namespace, out of the host's reach.
type Ports struct {
	Socket string // the kit's api.sock
	client *http.Client
}

// Ports is the client of the kit's port driver.
func (k Kit) Ports() *Ports { return NewPorts(k.APISocket()) }

// NewPorts is a client of the rootlesskit API at socket.
func NewPorts(socket string) *Ports {
	return &Ports{Socket: socket, client: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// PortSpec is one published port as rootlesskit's API writes it.
type PortSpec struct {
	Proto      string `json:"proto"` // tcp or udp
	ParentIP   string `json:"parentIP,omitempty"`
	ParentPort int    `json:"parentPort"`
	ChildIP    string `json:"childIP,omitempty"`
	ChildPort  int    `json:"childPort"`
}

func (s PortSpec) String() string {
	return fmt.Sprintf("%s:%d->%s:%d/%s", s.ParentIP, s.ParentPort, s.ChildIP, s.ChildPort, s.Proto)
}

// PortStatus is a port the driver publishes, with the id that removes it.
type PortStatus struct {
	ID   int      `json:"id"`
	Spec PortSpec `json:"spec"`
}

// PortError is the driver's refusal, with its message (e.g. the parent's bind error). It
// unwraps to the errno the message names, so callers can tell a port in use (EADDRINUSE, also
// for a port this kit already publishes), a privileged one (EACCES) and an address that is
// not the host's (EADDRNOTAVAIL) from other failures.
type PortError struct {
	Status  int
	Message string
}

func (e *PortError) Error() string {
	return fmt.Sprintf("rootlesskit's port driver: %s (HTTP %d)", e.Message, e.Status)
}

func (e *PortError) Unwrap() error {
	m := e.Message
	switch {
	case strings.Contains(m, "address already in use"), strings.HasPrefix(m, "conflict with ID"):
		return syscall.EADDRINUSE
	case strings.Contains(m, "privileged port"), strings.Contains(m, "permission denied"):
		return syscall.EACCES
	case strings.Contains(m, "cannot assign requested address"):
		return syscall.EADDRNOTAVAIL
	}
	return nil
}

// Add publishes a port and returns its id.
func (p *Ports) Add(ctx context.Context, s PortSpec) (int, error) {
	var st PortStatus
	if err := p.do(ctx, http.MethodPost, "/v1/ports", s, &st); err != nil {
		return 0, err // the caller names the port
	}
	return st.ID, nil
}

// List returns the published ports.
func (p *Ports) List(ctx context.Context) ([]PortStatus, error) {
	var out []PortStatus
	if err := p.do(ctx, http.MethodGet, "/v1/ports", nil, &out); err != nil {
		return nil, fmt.Errorf("listing published ports: %w", err)
	}
	return out, nil
}

// Remove unpublishes a port. One that is already gone is not an error.
func (p *Ports) Remove(ctx context.Context, id int) error {
	err := p.do(ctx, http.MethodDelete, "/v1/ports/"+strconv.Itoa(id), nil, nil)
	var pe *PortError
	if errors.As(err, &pe) && strings.HasPrefix(pe.Message, "unknown id") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unpublishing port %d: %w", id, err)
	}
	return nil
}

// RemoveWhere unpublishes every port whose child address drop selects; it returns what it
// removed. A kit that is not running publishes nothing: that is not an error.
func (p *Ports) RemoveWhere(ctx context.Context, drop func(child netip.Addr) bool) ([]PortSpec, error) {
	ports, err := p.List(ctx)
	if errors.Is(err, ErrKitDown) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var gone []PortSpec
	var errs []error
	for _, st := range ports {
		a, _ := netip.ParseAddr(st.Spec.ChildIP) // none: the child's loopback, never a run's
		if !drop(a) {
			continue
		}
		if err := p.Remove(ctx, st.ID); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, st.Spec)
	}
	return gone, errors.Join(errs...)
}

// ErrKitDown: nothing answers on the kit's API socket (rootlesskit is not running, so it
// publishes nothing).
var ErrKitDown = errors.New("rootlesskit is not running")

// Info is the part of the kit's /v1/info moatc uses.
type Info struct {
	NetworkDriver struct {
		Driver  string   `json:"driver"`
		DNS     []string `json:"dns"`
		ChildIP string   `json:"childIP"`
	} `json:"networkDriver"`
	PortDriver *struct {
		Driver string   `json:"driver"`
		Protos []string `json:"protos"`
	} `json:"portDriver"`
}

// Info asks the kit about its drivers.
func (p *Ports) Info(ctx context.Context) (*Info, error) {
	var in Info
	if err := p.do(ctx, http.MethodGet, "/v1/info", nil, &in); err != nil {
		return nil, fmt.Errorf("asking rootlesskit about its network: %w", err)
	}
	return &in, nil
}

func (p *Ports) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://rootlesskit"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (no API at %s)", ErrKitDown, p.Socket)
		}
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return apiError(resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("reading rootlesskit's answer %q: %w", bytes.TrimSpace(b), err)
	}
	return nil
}

// apiError is the driver's error answer: JSON {"message": ...}, or plain text.
func apiError(status int, body []byte) *PortError {
	var m struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &m) != nil || m.Message == "" {
		m.Message = strings.TrimSpace(string(body))
	}
	return &PortError{Status: status, Message: m.Message}
}
