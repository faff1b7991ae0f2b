package proxy

import (
	"net"
	"strings"
	"testing"
)

// A CA made in memory loads from its PEM, and signs; a key that is not its own is refused.
func TestCAFromPEM(t *testing.T) {
	cert, key, err := GenerateCA()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := CAFromPEM(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if string(ca.CertPEM()) != string(cert) {
		t.Error("CertPEM differs from the certificate given")
	}
	if _, err := ca.leaf("api.example.com"); err != nil {
		t.Errorf("signing a leaf: %v", err)
	}
	_, other, _ := GenerateCA()
	if _, err := CAFromPEM(cert, other); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("a foreign key: %v", err)
	}
}

// A proxy needs a client address unless it admits any client (a cluster's proxy pod).
func TestAnyClient(t *testing.T) {
	cert, key, _ := GenerateCA()
	ca, _ := CAFromPEM(cert, key)
	for _, any := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p, err := New(Config{Listener: ln, Secret: "s", CA: ca, AnyClient: any})
		if any != (err == nil) {
			t.Errorf("AnyClient %v: %v", any, err)
		}
		if p != nil {
			p.Close()
		}
	}
}
