package tests

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMigrateTLSRefused: peers without a proper certificate are refused
// during the TLS handshake, before any migration record is read, with a
// clear error on both sides; the source guest keeps running throughout,
// and the receiver keeps waiting and then takes a valid migration.
func TestMigrateTLSRefused(t *testing.T) {
	needGuest(t)
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	h.makeCerts(t)
	good := h.tls(0)
	other := filepath.Join(t.TempDir(), "other")
	if out, code := runFerry(t, "certs", "--dir", other, "--host", "127.0.0.1"); code != 0 {
		t.Fatalf("ferry certs: %s", out)
	}
	// The same CA signs a certificate for another host (ferry certs reuses it).
	if out, code := runFerry(t, "certs", "--dir", h.certs, "--host", "otherhost"); code != 0 || !strings.Contains(out, "using the existing CA") {
		t.Fatalf("ferry certs with an existing CA: exit %d: %s", code, out)
	}
	expired := expiredCert(t, h.certs)

	src := bootCounter(t, h, 0, "ferry.run=counter")
	dst, addr := receiverAt(t, h, 1, good)
	mixed := func(certDir string) []string { // cert and key from certDir, the good CA
		a := tlsArgs(certDir, "127.0.0.1")
		return append(a[:4], "--tls-ca", good[5])
	}
	cases := []struct {
		name         string
		tls          []string
		srcRe, dstRe string
	}{
		{"client certificate from another CA", mixed(other),
			`remote error: tls: .*the peer refused this side's certificate`, `unknown authority`},
		{"expired client certificate", append(expired, "--tls-ca", good[5]),
			`remote error: tls: `, `expired`},
		{"no TLS at all", nil,
			`this destination requires mutual TLS`, `without TLS`},
	}
	for _, c := range cases {
		t.Logf("== %s", c.name)
		srcFrom, dstFrom := src.p.count(), dst.p.count()
		out, code := runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", addr}, c.tls...)...)
		if code != 1 || !regexp.MustCompile(c.srcRe).MatchString(out) || !strings.Contains(out, "keeps running") {
			t.Fatalf("%s: ferry migrate exit %d, want 1 with %q:\n%s", c.name, code, c.srcRe, out)
		}
		t.Logf("source: %s", lastLine(out))
		line, _ := dst.p.waitFor(regexp.MustCompile(`refused a connection from`), dstFrom, 30*time.Second)
		if !regexp.MustCompile(c.dstRe).MatchString(line) {
			t.Fatalf("%s: destination said %q, want %q", c.name, line, c.dstRe)
		}
		t.Logf("destination: %s", line)
		expectRunning(t, src, srcFrom)
	}

	t.Log("== no client certificate")
	dstFrom := dst.p.count()
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(good[5])
	pool.AppendCertsFromPEM(caPEM)
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	if err == nil { // TLS 1.3: the server's verdict on the client comes with the first read
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("client without a certificate: %v, want the server to require one", err)
	}
	line, _ := dst.p.waitFor(regexp.MustCompile(`refused a connection from .*didn't provide a certificate`), dstFrom, 30*time.Second)
	t.Logf("destination: %s", line)

	// The source checks the destination's certificate too.
	for _, c := range []struct {
		name, re string
		tls      []string
	}{
		{"destination certificate from another CA", `certificate signed by unknown authority`, tlsArgs(other, "127.0.0.1")},
		{"destination certificate for another host", `not valid for|valid for otherhost|doesn.t contain any IP SANs`, tlsArgs(h.certs, "otherhost")},
	} {
		t.Logf("== %s", c.name)
		bad, badAddr := receiverAt(t, h, 1, c.tls)
		srcFrom := src.p.count()
		out, code := runFerry(t, append([]string{"migrate", "--api-socket", src.sock, "--to", badAddr}, good...)...)
		if code != 1 || !regexp.MustCompile(c.re).MatchString(out) || !strings.Contains(out, "TLS handshake") {
			t.Fatalf("%s: ferry migrate exit %d, want 1 with %q:\n%s", c.name, code, c.re, out)
		}
		t.Logf("source: %s", lastLine(out))
		bad.p.waitFor(regexp.MustCompile(`refused a connection from .*TLS handshake`), 0, 30*time.Second)
		expectRunning(t, src, srcFrom)
	}

	// Nothing was refused after reading migration records: no refused
	// connection made the receiver allocate a guest.
	if strings.Contains(dst.p.output(), "receiving a guest") {
		t.Fatal("the receiver read a HELLO from a refused peer")
	}

	t.Log("== without TLS, a non-loopback --listen is refused unless --insecure")
	for _, l := range []string{"0.0.0.0:7399", ":7399"} {
		out, code := runFerry(t, "receive", "--listen", l)
		if code != 2 || !strings.Contains(out, "only on loopback") || !strings.Contains(out, "ferry certs") {
			t.Fatalf("receive --listen %s without TLS: exit %d: %s", l, code, out)
		}
	}
	out, code := runFerry(t, "receive", "--listen", "0.0.0.0:7399", "--insecure", "--timeout", "1s")
	if code != 1 || !strings.Contains(out, "no guest arrived within --timeout") {
		t.Fatalf("receive --insecure --timeout 1s: exit %d: %s", code, out)
	}

	t.Log("== a valid migration to the receiver that refused all of the above")
	migrateTo(t, h, src, dst, addr)
}

// expiredCert makes a client certificate for 127.0.0.1, signed by the CA
// in dir, that expired yesterday; it returns its --tls-cert/--tls-key flags.
func expiredCert(t *testing.T, dir string) []string {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatalf("%s: not PEM", name)
		}
		return blk.Bytes
	}
	ca, err := x509.ParseCertificate(read("ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	caKey, err := x509.ParsePKCS8PrivateKey(read("ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     time.Now().Add(-24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	out := t.TempDir()
	cert, keyFile := filepath.Join(out, "expired.pem"), filepath.Join(out, "expired-key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	return []string{"--tls-cert", cert, "--tls-key", keyFile}
}
