package rootless

import (
	"errors"
	"syscall"
	"testing"
)

// The messages are rootlesskit 1.1.0's, as its API answered them on this machine.
func TestPortErrorErrno(t *testing.T) {
	for _, c := range []struct {
		body string
		want error
	}{
		{`{"message":"listen tcp 127.0.0.1:18501: bind: address already in use"}`, syscall.EADDRINUSE},
		{`{"message":"conflict with ID 1"}`, syscall.EADDRINUSE},
		{`{"message":"cannot expose privileged port 80, you can add 'net.ipv4.ip_unprivileged_port_start=80' to /etc/sysctl.conf (currently 1024), or set CAP_NET_BIND_SERVICE on rootlesskit binary, or choose a larger port number (\u003e= 1024): listen tcp 127.0.0.1:80: bind: permission denied"}`, syscall.EACCES},
		{`{"message":"listen tcp 10.9.9.9:18502: bind: cannot assign requested address"}`, syscall.EADDRNOTAVAIL},
	} {
		err := apiError(400, []byte(c.body))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: errors.Is(%v) = false", c.body, c.want)
		}
		if err.Message == "" || err.Message[0] == '{' {
			t.Errorf("%s: message %q was not taken out of the JSON", c.body, err.Message)
		}
	}
	unknown := apiError(400, []byte(`{"message":"unknown id: 1"}`))
	for _, e := range []error{syscall.EADDRINUSE, syscall.EACCES, syscall.EADDRNOTAVAIL} {
		if errors.Is(unknown, e) {
			t.Errorf("unknown id: unwraps to %v", e)
		}
	}
	if got := apiError(500, []byte("plain failure\n")).Message; got != "plain failure" {
		t.Errorf("plain text body: message %q", got)
	}
}
