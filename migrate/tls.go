package migrate

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"
)

// Mutual TLS for the migration connection. Both sides present a
// certificate from the same CA (`ferry certs` makes them) and verify the
// peer's: the destination requires a client certificate, the source checks
// the destination's certificate against the host name or IP it dialled.
// TLS 1.3 only.

// TLSFiles names the PEM files of one side: its certificate and key, and
// the CA certificate(s) that the peer's certificate must chain to.
type TLSFiles struct {
	Cert string `json:"cert,omitempty"`
	Key  string `json:"key,omitempty"`
	CA   string `json:"ca,omitempty"`
}

// Enabled reports whether any file is named (Check then wants all three).
func (f TLSFiles) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Check wants all three files or none.
func (f TLSFiles) Check() error {
	if !f.Enabled() || (f.Cert != "" && f.Key != "" && f.CA != "") {
		return nil
	}
	var missing []string
	for _, m := range []struct{ name, v string }{{"--tls-cert", f.Cert}, {"--tls-key", f.Key}, {"--tls-ca", f.CA}} {
		if m.v == "" {
			missing = append(missing, m.name)
		}
	}
	return fmt.Errorf("mutual TLS needs --tls-cert, --tls-key and --tls-ca together (missing %s)", strings.Join(missing, ", "))
}

func (f TLSFiles) load() (tls.Certificate, *x509.CertPool, error) {
	if err := f.Check(); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return cert, nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", f.Cert, f.Key, err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return cert, nil, fmt.Errorf("--tls-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return cert, nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", f.CA)
	}
	return cert, pool, nil
}

// ServerTLSConfig is the destination's configuration: it presents its
// certificate and refuses, during the handshake, any peer without a
// certificate from the CA.
func ServerTLSConfig(f TLSFiles) (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}, nil
}

// ClientTLSConfig is the source's configuration for dialling addr
// (HOST:PORT): the destination's certificate must come from the CA and
// name HOST (a DNS name or an IP address).
func ClientTLSConfig(f TLSFiles, addr string) (*tls.Config, error) {
	cert, pool, err := f.load()
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("destination %q: %w", addr, err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   host,
	}, nil
}

// ExplainTLSError adds a hint to TLS failures whose cause is not obvious
// from crypto/tls's message.
func ExplainTLSError(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	var hint string
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var certErr x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknownCA):
		hint = "the peer's certificate is not signed by the --tls-ca CA"
	case errors.As(err, &hostErr):
		hint = "the peer's certificate does not name the address dialled"
	case errors.As(err, &certErr) && certErr.Reason == x509.Expired:
		hint = "the peer's certificate has expired or is not valid yet"
	case strings.Contains(msg, "remote error: tls:"):
		hint = "the peer refused this side's certificate (not from its CA, expired, or missing)"
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		hint = "the peer does not speak TLS: give both sides --tls-cert, --tls-key and --tls-ca"
	default:
		return err
	}
	return fmt.Errorf("%w (%s)", err, hint)
}

// ServerHandshake readies a connection the destination accepted, within
// timeout: with cfg, the TLS handshake (a peer without a certificate from
// the CA is refused here, before any migration record is read); without
// cfg, the connection is used as it is. A plaintext ferry source talking
// to a TLS destination gets an ERROR record saying so; a TLS source
// talking to a plaintext destination is refused with an explicit error.
func ServerHandshake(conn net.Conn, cfg *tls.Config, timeout time.Duration) (net.Conn, error) {
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	var first [4]byte
	if _, err := io.ReadFull(conn, first[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("the peer sent nothing within %v", timeout)
		}
		return nil, fmt.Errorf("the peer hung up before saying anything: %w", err)
	}
	pc := &prefixConn{Conn: conn, pre: first[:]}
	var out net.Conn = pc
	switch {
	case cfg != nil && binary.BigEndian.Uint32(first[:]) == Magic:
		sendErrorRecord(conn, "this destination requires mutual TLS: run ferry migrate with --tls-cert, --tls-key and --tls-ca (see ferry certs)")
		return nil, errors.New("refused a migration without TLS: this receiver requires mutual TLS")
	case cfg != nil:
		tc := tls.Server(pc, cfg)
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("TLS handshake: %w", ExplainTLSError(err))
		}
		out = tc
	case first[0] == 0x16: // a TLS handshake record
		return nil, errors.New("the peer speaks TLS, but this receiver runs without it (start ferry receive with --tls-cert, --tls-key and --tls-ca)")
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	return out, nil
}

// prefixConn gives back bytes already read before the rest of the stream.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
