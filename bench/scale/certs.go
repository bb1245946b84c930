package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// Mutual TLS as ferry sets it up: a CA and, for each side, an ECDSA P-256
// certificate for 127.0.0.1 usable as server and client, as `ferry certs`
// makes them (cmd/ferry/certs.go); the children load them with
// migrate.ServerTLSConfig and migrate.ClientTLSConfig, as ferry receive
// and ferry migrate do.

// makeCerts writes ca.pem, and src.pem, src-key.pem, dst.pem, dst-key.pem
// signed by it, into dir.
func makeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ferry scale benchmark CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, "ca.pem"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	for i, name := range []string{"src", "dst"} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(2 + i)),
			Subject:      pkix.Name{CommonName: name},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("%s certificate: %w", name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, name+".pem"), "CERTIFICATE", der); err != nil {
			return err
		}
		if err := writePEM(filepath.Join(dir, name+"-key.pem"), "PRIVATE KEY", keyDER); err != nil {
			return err
		}
	}
	return nil
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(path), err)
	}
	return nil
}

// tlsFiles names one side's files in dir.
func tlsFiles(dir, side string) migrate.TLSFiles {
	return migrate.TLSFiles{
		Cert: filepath.Join(dir, side+".pem"),
		Key:  filepath.Join(dir, side+"-key.pem"),
		CA:   filepath.Join(dir, "ca.pem"),
	}
}

// clientTLS is the sender's configuration for addr; nil without dir.
func clientTLS(dir, addr string) (*tls.Config, error) {
	if dir == "" {
		return nil, nil
	}
	return migrate.ClientTLSConfig(tlsFiles(dir, "src"), addr)
}

// serverTLS is the receiver's configuration; nil without dir.
func serverTLS(dir string) (*tls.Config, error) {
	if dir == "" {
		return nil, nil
	}
	return migrate.ServerTLSConfig(tlsFiles(dir, "dst"))
}
