package engine

import (
	"encoding/base64"
	"testing"
)

func TestRegistryCreds(t *testing.T) {
	enc := func(s string) string { return base64.URLEncoding.EncodeToString([]byte(s)) }
	for _, c := range []struct {
		header, host, user, secret string
	}{
		{enc(`{"username":"u","password":"p","serveraddress":"reg.example:5000"}`), "reg.example:5000", "u", "p"},
		{enc(`{"username":"u","password":"p","serveraddress":"reg.example:5000"}`), "other.example", "", ""},
		{enc(`{"auth":"` + base64.StdEncoding.EncodeToString([]byte("a:b:c")) + `"}`), "any", "a", "b:c"},
		{enc(`{"identitytoken":"tok","serveraddress":"https://index.docker.io/v1/"}`), "registry-1.docker.io", "", "tok"},
	} {
		creds, err := registryCreds(c.header)
		if err != nil || creds == nil {
			t.Fatalf("%s: %v", c.header, err)
		}
		u, s, err := creds(c.host)
		if err != nil || u != c.user || s != c.secret {
			t.Errorf("%s for %s: %q %q %v, want %q %q", c.header, c.host, u, s, err, c.user, c.secret)
		}
	}
	if creds, err := registryCreds(enc(`{}`)); err != nil || creds != nil {
		t.Errorf("an empty auth config: %v", err)
	}
	for _, bad := range []string{"!!!", enc("not json")} {
		if _, err := registryCreds(bad); statusOf(err) != 400 {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func TestProgressBar(t *testing.T) {
	if got := progressBar(1_200_000, 2_400_000); got != "[=========================>                        ] 1.2MB/2.4MB" {
		t.Errorf("progressBar: %q", got)
	}
	if got := progressBar(5, 5); got != "[==================================================] 5B/5B" {
		t.Errorf("progressBar at the end: %q", got)
	}
}
