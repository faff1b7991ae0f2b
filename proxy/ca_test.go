package proxy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLoadCACreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "ca")
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, caKeyFile: 0o600, caCertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %o, want %o", name, fi.Mode().Perm(), want)
		}
	}
	if ca.CertPath() != filepath.Join(dir, "ca.pem") {
		t.Errorf("CertPath %s", ca.CertPath())
	}
	if bytes.Contains(ca.CertPEM(), []byte("PRIVATE")) {
		t.Error("CertPEM has the key")
	}
	c := ca.cert
	host, _ := os.Hostname()
	if c.Subject.CommonName != "moatc proxy CA "+host || !c.IsCA || c.MaxPathLen != 0 || !c.MaxPathLenZero ||
		c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate %+v", c.Subject)
	}
	if k, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("key %T", c.PublicKey)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < 9*365*24*time.Hour || d > 11*365*24*time.Hour {
		t.Errorf("validity %s", d)
	}
	again, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.CertPEM(), ca.CertPEM()) {
		t.Error("second LoadCA made a new CA")
	}
	if err := CheckCA(dir); err != nil {
		t.Errorf("CheckCA: %v", err)
	}
}

func TestLoadCAConcurrent(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	pems := make([][]byte, 8)
	for i := range pems {
		wg.Go(func() {
			ca, err := LoadCA(dir)
			if err != nil {
				t.Error(err)
				return
			}
			pems[i] = ca.CertPEM()
		})
	}
	wg.Wait()
	for _, p := range pems[1:] {
		if !bytes.Equal(p, pems[0]) {
			t.Fatal("concurrent LoadCA made different CAs")
		}
	}
}

func TestCAKeyMode(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadCA(dir); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, caKeyFile)
	before, _ := os.ReadFile(key)
	for _, mode := range []os.FileMode{0o640, 0o604, 0o620} {
		os.Chmod(key, mode)
		_, err := LoadCA(dir)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") || !strings.Contains(err.Error(), "remove") {
			t.Errorf("mode %o: LoadCA: %v", mode, err)
		}
		if err := CheckCA(dir); err == nil {
			t.Errorf("mode %o: CheckCA passed", mode)
		}
	}
	if after, _ := os.ReadFile(key); !bytes.Equal(before, after) {
		t.Error("key replaced")
	}
}

func TestCABroken(t *testing.T) {
	other := t.TempDir()
	if _, err := LoadCA(other); err != nil {
		t.Fatal(err)
	}
	otherCert, _ := os.ReadFile(filepath.Join(other, caCertFile))

	for name, tc := range map[string]struct {
		setup func(dir string)
		want  string
	}{
		"corrupt cert": {func(dir string) { os.WriteFile(filepath.Join(dir, caCertFile), []byte("junk"), 0o644) }, "parse certificate"},
		"corrupt key":  {func(dir string) { os.WriteFile(filepath.Join(dir, caKeyFile), []byte("junk"), 0o600) }, "parse key"},
		"mismatch":     {func(dir string) { os.WriteFile(filepath.Join(dir, caCertFile), otherCert, 0o644) }, "does not match"},
		"cert missing": {func(dir string) { os.Remove(filepath.Join(dir, caCertFile)) }, "missing"},
		"key missing":  {func(dir string) { os.Remove(filepath.Join(dir, caKeyFile)) }, "missing"},
		"expired":      {writeExpiredCA, "expired"},
		// A directory where the key should be: unreadable even for root, who reads any file.
		"key unreadable": {func(dir string) {
			os.Remove(filepath.Join(dir, caKeyFile))
			os.Mkdir(filepath.Join(dir, caKeyFile), 0o700)
		}, "key"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := LoadCA(dir); err != nil {
				t.Fatal(err)
			}
			tc.setup(dir)
			cert, _ := os.ReadFile(filepath.Join(dir, caCertFile))
			for fn, err := range map[string]error{"CheckCA": CheckCA(dir), "LoadCA": loadErr(dir)} {
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "remove") {
					t.Errorf("%s: %v, want %q and the fix", fn, err, tc.want)
				}
			}
			if after, _ := os.ReadFile(filepath.Join(dir, caCertFile)); !bytes.Equal(cert, after) {
				t.Error("CA replaced")
			}
		})
	}
}

func loadErr(dir string) error {
	_, err := LoadCA(dir)
	return err
}

func writeExpiredCA(dir string) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "old"},
		NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		panic(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	os.WriteFile(filepath.Join(dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	os.WriteFile(filepath.Join(dir, caCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func TestCheckCAMissing(t *testing.T) {
	if err := CheckCA(filepath.Join(t.TempDir(), "nope")); err != nil {
		t.Errorf("missing dir: %v", err)
	}
	if err := CheckCA(t.TempDir()); err != nil {
		t.Errorf("empty dir: %v", err)
	}
}

func TestLeaf(t *testing.T) {
	ca := sharedCA(t)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.CertPEM())

	var wg sync.WaitGroup
	got := make([]any, 20)
	for i := range got {
		wg.Go(func() {
			c, err := ca.leaf("leaf.test")
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = c
		})
	}
	wg.Wait()
	for _, c := range got[1:] {
		if c != got[0] {
			t.Fatal("concurrent first requests made more than one leaf")
		}
	}
	c, _ := ca.leaf("leaf.test")
	l := c.Leaf
	if _, err := l.Verify(x509.VerifyOptions{DNSName: "leaf.test", Roots: pool}); err != nil {
		t.Error(err)
	}
	if d := time.Until(l.NotBefore); d > -50*time.Minute || d < -70*time.Minute {
		t.Errorf("NotBefore %s from now", d)
	}
	if d := time.Until(l.NotAfter); d < 6*24*time.Hour || d > 8*24*time.Hour {
		t.Errorf("NotAfter %s from now", d)
	}
	if k, ok := l.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("leaf key %T", l.PublicKey)
	}
	ip, err := ca.leaf("10.1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if len(ip.Leaf.IPAddresses) != 1 || !ip.Leaf.IPAddresses[0].Equal(net.ParseIP("10.1.2.3")) || len(ip.Leaf.DNSNames) != 0 {
		t.Errorf("IP leaf SANs %v %v", ip.Leaf.IPAddresses, ip.Leaf.DNSNames)
	}
}

func TestLeafCacheBounded(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := ca.leaf("h0.test")
	for i := 1; i <= leafCacheSize; i++ {
		if _, err := ca.leaf(fmt.Sprintf("h%d.test", i)); err != nil {
			t.Fatal(err)
		}
	}
	ca.mu.Lock()
	n, l := len(ca.leaves), ca.lru.Len()
	ca.mu.Unlock()
	if n != leafCacheSize || l != leafCacheSize {
		t.Errorf("cache holds %d/%d entries", n, l)
	}
	if again, _ := ca.leaf("h0.test"); again == first {
		t.Error("the least recently used leaf was not evicted")
	}
}
