package proxy

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/moatc/moatc/internal/atomicfile"
	"github.com/moatc/moatc/state"
)

const (
	caCertFile    = "ca.pem"
	caKeyFile     = "ca-key.pem"
	caLockFile    = ".lock"
	caValidity    = 10 * 365 * 24 * time.Hour
	leafValidity  = 7 * 24 * time.Hour
	leafRenew     = 3 * 24 * time.Hour // a cached leaf is re-made this long after it was made
	leafCacheSize = 1000
)

// CA is moatc's certificate authority for intercepting TLS: made once, reused. Its leaf
// certificates are cached per host.
type CA struct {
	dir     string
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer

	mu     sync.Mutex
	leaves map[string]*leafEntry
	lru    list.List // of *leafEntry, most recently used first
}

type leafEntry struct {
	host    string
	ready   chan struct{} // closed when cert or err is set
	cert    *tls.Certificate
	err     error
	renew   time.Time
	elem    *list.Element
	evicted bool
}

// LoadCA loads dir/ca.pem and dir/ca-key.pem, making them when both are missing. Creation
// is serialized across processes by an flock on dir/.lock.
func LoadCA(dir string) (*CA, error) {
	if dir == "" {
		return nil, errors.New("load CA: no directory given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("load CA: create %s: %w", dir, err)
	}
	haveCert, haveKey, err := caFiles(dir)
	if err != nil {
		return nil, err
	}
	if !haveCert || !haveKey {
		// Missing or half made: another moatc may be making it right now.
		unlock, err := state.Lock(filepath.Join(dir, caLockFile))
		if err != nil {
			return nil, err
		}
		defer unlock()
		if haveCert, haveKey, err = caFiles(dir); err != nil {
			return nil, err
		}
		if !haveCert && !haveKey {
			return createCA(dir)
		}
	}
	return readCA(dir)
}

// CheckCA reports whether the CA in dir is usable: nil when it is, or when it does not exist
// yet (the first run makes it); otherwise an error that says how to fix it.
func CheckCA(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	haveCert, haveKey, err := caFiles(dir)
	if err != nil {
		return err
	}
	if !haveCert && !haveKey {
		return nil
	}
	_, err = readCA(dir)
	return err
}

// CertPEM returns the CA's certificate (never the key), PEM encoded.
func (ca *CA) CertPEM() []byte { return append([]byte(nil), ca.certPEM...) }

// CertPath returns the path of the CA's certificate file.
func (ca *CA) CertPath() string { return filepath.Join(ca.dir, caCertFile) }

func caFiles(dir string) (haveCert, haveKey bool, err error) {
	exists := func(name string) (bool, error) {
		_, err := os.Stat(filepath.Join(dir, name))
		if err == nil {
			return true, nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("check CA file: %w", err)
	}
	if haveCert, err = exists(caCertFile); err != nil {
		return false, false, err
	}
	if haveKey, err = exists(caKeyFile); err != nil {
		return false, false, err
	}
	return haveCert, haveKey, nil
}

func remakeHint(dir string) string {
	return fmt.Sprintf("remove %s and %s to make a new CA; runs started after that trust only the new one",
		filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile))
}

// readCA reads and checks an existing pair.
func readCA(dir string) (*CA, error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	hint := remakeHint(dir)

	kf, err := os.Open(keyPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load CA: %s is missing but %s exists; %s", keyPath, certPath, hint)
		}
		return nil, fmt.Errorf("load CA: open key: %w; fix its permissions or %s", err, hint)
	}
	defer kf.Close()
	fi, err := kf.Stat()
	if err != nil {
		return nil, fmt.Errorf("load CA: stat key: %w", err)
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return nil, fmt.Errorf("load CA: key %s is accessible by group or others (mode %04o): if nobody else could have read it run chmod 600 %s, otherwise %s",
			keyPath, mode, keyPath, hint)
	}
	keyPEM, err := io.ReadAll(io.LimitReader(kf, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("load CA: read key: %w; fix it or %s", err, hint)
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("load CA: %s is missing but %s exists; %s", certPath, keyPath, hint)
		}
		return nil, fmt.Errorf("load CA: read certificate: %w; fix its permissions or %s", err, hint)
	}

	return parseCA(dir, certPEM, keyPEM, certPath, keyPath, hint)
}

// CAFromPEM makes a CA from a certificate and key held in memory (a cluster run's proxy reads
// them from a Secret, whose files it cannot chmod). It has no directory.
func CAFromPEM(certPEM, keyPEM []byte) (*CA, error) {
	return parseCA("", certPEM, keyPEM, "the certificate", "the key", "make a new CA")
}

func parseCA(dir string, certPEM, keyPEM []byte, certPath, keyPath, hint string) (*CA, error) {
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: parse key %s: %w; %s", keyPath, err, hint)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("load CA: parse certificate %s: no PEM CERTIFICATE block; %s", certPath, hint)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("load CA: parse certificate %s: %w; %s", certPath, err, hint)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate; %s", certPath, hint)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load CA: certificate %s does not match key %s; %s", certPath, keyPath, hint)
	}
	now := time.Now()
	if now.After(cert.NotAfter) {
		return nil, fmt.Errorf("load CA: certificate %s expired on %s; %s", certPath, cert.NotAfter.Format(time.DateOnly), hint)
	}
	if now.Before(cert.NotBefore) {
		return nil, fmt.Errorf("load CA: certificate %s is not valid before %s (is the clock right?); %s", certPath, cert.NotBefore.Format(time.RFC3339), hint)
	}
	return &CA{dir: dir, cert: cert, certPEM: pem.EncodeToMemory(block), key: key}, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	var (
		k   any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported key type %T", k)
	}
	return s, nil
}

// GenerateCA makes a new CA in memory and returns its certificate and key, PEM encoded.
func GenerateCA() (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("make CA: generate key: %w", err)
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "moatc proxy CA " + host, Organization: []string{"moatc"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("make CA: sign certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("make CA: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func createCA(dir string) (*CA, error) {
	certPEM, keyPEM, err := GenerateCA()
	if err != nil {
		return nil, err
	}
	// Key first: a crash in between leaves a key without a certificate, which loading reports.
	if err := atomicfile.Write(filepath.Join(dir, caKeyFile), keyPEM, 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(filepath.Join(dir, caCertFile), certPEM, 0o644); err != nil {
		return nil, err
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return nil, fmt.Errorf("make CA: sync %s: %w", dir, err)
		}
	}
	return readCA(dir)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n.Add(n, big.NewInt(1))
}

// leaf returns a certificate for host (a normalized name or IP), from the cache when it has a
// fresh one. Concurrent first calls for one host make it once.
func (ca *CA) leaf(host string) (*tls.Certificate, error) {
	now := time.Now()
	ca.mu.Lock()
	if ca.leaves == nil {
		ca.leaves = make(map[string]*leafEntry)
	}
	if e, ok := ca.leaves[host]; ok {
		select {
		case <-e.ready:
			if e.err == nil && now.Before(e.renew) {
				ca.lru.MoveToFront(e.elem)
				ca.mu.Unlock()
				return e.cert, nil
			}
			ca.dropLocked(e)
		default:
			ca.mu.Unlock()
			<-e.ready
			return e.cert, e.err
		}
	}
	e := &leafEntry{host: host, ready: make(chan struct{})}
	e.elem = ca.lru.PushFront(e)
	ca.leaves[host] = e
	for ca.lru.Len() > leafCacheSize {
		ca.dropLocked(ca.lru.Back().Value.(*leafEntry))
	}
	ca.mu.Unlock()

	e.cert, e.err = ca.mint(host, now)
	e.renew = now.Add(leafRenew)
	close(e.ready)
	if e.err != nil {
		ca.mu.Lock()
		if ca.leaves[host] == e {
			ca.dropLocked(e)
		}
		ca.mu.Unlock()
	}
	return e.cert, e.err
}

func (ca *CA) dropLocked(e *leafEntry) {
	if e.evicted {
		return
	}
	e.evicted = true
	ca.lru.Remove(e.elem)
	if ca.leaves[e.host] == e {
		delete(ca.leaves, e.host)
	}
}

func (ca *CA) mint(host string, now time.Time) (*tls.Certificate, error) {
	notBefore, notAfter := now.Add(-time.Hour), now.Add(leafValidity)
	if notBefore.Before(ca.cert.NotBefore) {
		notBefore = ca.cert.NotBefore
	}
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	if !notAfter.After(now) {
		return nil, fmt.Errorf("make certificate for %s: the CA expired on %s; %s", host, ca.cert.NotAfter.Format(time.DateOnly), remakeHint(ca.dir))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("make certificate for %s: %w", host, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if len(host) <= 64 {
		tmpl.Subject.CommonName = host
	}
	if a, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, a.AsSlice())
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("make certificate for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("make certificate for %s: %w", host, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}
