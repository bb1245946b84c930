package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
)

var certsCommand = &cli.Command{
	Name:      "certs",
	Usage:     "make a CA and certificates for mutual TLS between ferry hosts",
	ArgsUsage: " ",
	Description: `Writes, in --dir, a certificate authority (ca.pem, ca-key.pem) and, for
each --host, a certificate and key (HOST.pem, HOST-key.pem) signed by it:
ECDSA P-256, usable both as a server certificate (ferry receive) and as a
client certificate (the source of ferry migrate). A --host value is a DNS
name or an IP address; several names of one host go comma-separated
("hostb,10.0.0.2": files hostb.pem and hostb-key.pem, valid for both).

If --dir already holds ca.pem and ca-key.pem, they sign the new host
certificates (to add a host later). No existing file is ever overwritten.
Copy ca.pem and a host's two files to that host; keep ca-key.pem offline.`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "dir", Usage: "output `DIR` (created if missing)", Required: true},
		&cli.StringSliceFlag{Name: "host", Usage: "host `NAME_OR_IP[,MORE]` to make a certificate for (repeat for more hosts)", Required: true},
		&cli.IntFlag{Name: "days", Value: 825, Usage: "validity of the host certificates (the CA's is 10 years)"},
	},
	Action: certsAction,
}

// tlsFlags are the mutual-TLS flags of ferry receive and ferry migrate.
func tlsFlags(whose string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "tls-cert", Usage: whose + " certificate (PEM, from ferry certs)"},
		&cli.StringFlag{Name: "tls-key", Usage: whose + " private key (PEM)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "CA certificate the peer's certificate must chain to (PEM)"},
	}
}

// tlsFiles reads the TLS flags: all three or none, absolute paths, files
// that exist.
func tlsFiles(c *cli.Context) (migrate.TLSFiles, error) {
	f := migrate.TLSFiles{Cert: c.String("tls-cert"), Key: c.String("tls-key"), CA: c.String("tls-ca")}
	if err := f.Check(); err != nil {
		return f, usageError{err}
	}
	for _, p := range []struct {
		flag string
		path *string
	}{{"tls-cert", &f.Cert}, {"tls-key", &f.Key}, {"tls-ca", &f.CA}} {
		if *p.path == "" {
			continue
		}
		if err := checkFile(p.flag, *p.path); err != nil {
			return f, err
		}
		abs, err := filepath.Abs(*p.path)
		if err != nil {
			return f, flagError(p.flag, "%v", err)
		}
		*p.path = abs
	}
	return f, nil
}

func certsAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("certs takes no arguments (got %q); hosts go in --host", c.Args().First())}
	}
	dir := c.String("dir")
	days := c.Int("days")
	if days < 1 {
		return flagError("days", "%d: must be at least 1", days)
	}
	type hostCert struct {
		file  string
		names []string
	}
	var hosts []hostCert
	seen := map[string]bool{}
	for _, h := range c.StringSlice("host") {
		var names []string
		for _, n := range strings.Split(h, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
		if len(names) == 0 {
			return flagError("host", "%q: empty", h)
		}
		for _, n := range names {
			if strings.ContainsAny(n, "/\\ ") || n == "." || n == ".." || n == "ca" {
				return flagError("host", "%q is not a host name or IP address", n)
			}
		}
		if seen[names[0]] {
			return flagError("host", "%q given twice", names[0])
		}
		seen[names[0]] = true
		hosts = append(hosts, hostCert{file: names[0], names: names})
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return flagError("dir", "%v", err)
	}

	caCert, caKey := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	reuse := exists(caCert) && exists(caKey)
	if !reuse && (exists(caCert) || exists(caKey)) {
		return flagError("dir", "%s holds only one of ca.pem and ca-key.pem: refusing to overwrite it", dir)
	}
	// Refuse before writing anything.
	for _, h := range hosts {
		for _, f := range []string{h.file + ".pem", h.file + "-key.pem"} {
			if p := filepath.Join(dir, f); exists(p) {
				return fmt.Errorf("%s exists: refusing to overwrite it (remove it first, or choose another --dir)", p)
			}
		}
	}

	var ca *x509.Certificate
	var key *ecdsa.PrivateKey
	var err error
	if reuse {
		if ca, key, err = loadCA(caCert, caKey); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "using the existing CA %s\n", caCert)
	} else {
		if ca, key, err = makeCA(caCert, caKey); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "wrote %s and %s\n", caCert, caKey)
	}
	for _, h := range hosts {
		certPath, keyPath := filepath.Join(dir, h.file+".pem"), filepath.Join(dir, h.file+"-key.pem")
		if err := makeHostCert(ca, key, h.names, time.Duration(days)*24*time.Hour, certPath, keyPath); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "wrote %s and %s for %s\n", certPath, keyPath, strings.Join(h.names, ", "))
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func makeCA(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "ferry migration CA", Organization: []string{"ferry"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePEM(keyPath, key, 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileExcl(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func loadCA(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
	}
	ca, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !ca.IsCA || !key.PublicKey.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("%s and %s are not a ferry CA certificate and its ECDSA key", certPath, keyPath)
	}
	return ca, key, nil
}

func makeHostCert(ca *x509.Certificate, caKey *ecdsa.PrivateKey, names []string, valid time.Duration, certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: names[0], Organization: []string{"ferry"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(valid),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := writePEM(keyPath, key, 0o600); err != nil {
		return err
	}
	return writeFileExcl(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writePEM(path string, key *ecdsa.PrivateKey, mode os.FileMode) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return writeFileExcl(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), mode)
}

// writeFileExcl creates path, failing if it exists.
func writeFileExcl(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists: refusing to overwrite it", path)
	}
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
