package policy

import "testing"

func TestParsePattern(t *testing.T) {
	for _, c := range []struct {
		in, want string
		bad      bool
	}{
		{in: "API.Example.com.", want: "api.example.com"},
		{in: "*.example.com", want: "*.example.com"},
		{in: "example.com:8443", want: "example.com:8443"},
		{in: "10.0.0.1:443", want: "10.0.0.1:443"},
		{in: "[2001:db8::1]:443", want: "[2001:db8::1]:443"},
		{in: "*", bad: true},
		{in: "*.com", bad: true},
		{in: "a.*.com", bad: true},
		{in: "https://example.com", bad: true},
		{in: "example.com/path", bad: true},
		{in: "example.com:0", bad: true},
		{in: "example.com:99999", bad: true},
		{in: "example.com:", bad: true},
		{in: "", bad: true},
		{in: "exa mple.com", bad: true},
	} {
		p, err := ParsePattern(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("%q: accepted as %v", c.in, p)
			}
			continue
		}
		if err != nil || p.String() != c.want {
			t.Errorf("%q: %v %v, want %s", c.in, p, err, c.want)
		}
	}
}

func TestAllows(t *testing.T) {
	mustParse := func(s string) Pattern {
		p, err := ParsePattern(s)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	pol := Policy{Strict: true, Allow: []Pattern{mustParse("api.example.com"), mustParse("*.example.org"), mustParse("git.example.net:443")}}
	for _, c := range []struct {
		host string
		port uint16
		want bool
	}{
		{"api.example.com", 443, true},
		{"API.EXAMPLE.COM.", 8080, true},
		{"x.api.example.com", 443, false}, // a name is exact
		{"a.example.org", 443, true},
		{"a.b.example.org", 443, true},
		{"example.org", 443, false}, // *.domain is below the domain only
		{"evilexample.org", 443, false},
		{"git.example.net", 443, true},
		{"git.example.net", 22, false},
		{"other.com", 443, false},
	} {
		if got := pol.Allows(c.host, c.port); got != c.want {
			t.Errorf("%s:%d: %v, want %v", c.host, c.port, got, c.want)
		}
	}
	if !(Policy{}).Allows("anything.example", 1) {
		t.Error("a permissive policy refused a host")
	}
}
