package incoming

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"time"
)

// PeerIdentity names the authenticated source for the Keeper: the SHA-256
// of its TLS certificate; "" without TLS (no check).
func PeerIdentity(conn net.Conn) string {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return ""
	}
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return ""
	}
	sum := sha256.Sum256(certs[0].Raw)
	return hex.EncodeToString(sum[:])
}

// LingerClose lets the peer read what this side sent last (an ERROR
// record, a TLS alert) before the connection is closed: closing a socket
// that still has unread input makes the kernel reset the connection, and
// the reset can destroy data the peer has not read yet. It half-closes,
// then discards input until the peer closes too, for at most two seconds.
func LingerClose(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 256<<20))
}

// LoopbackOnly refuses a listen address that is not a loopback address:
// without TLS anyone who can reach the port could send a guest, or read
// guest memory on the wire.
func LoopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ok := host != ""
	if ip := net.ParseIP(host); ip != nil {
		ok = ip.IsLoopback()
	} else if ok {
		ips, err := net.LookupIP(host)
		ok = err == nil && len(ips) > 0
		for _, ip := range ips {
			ok = ok && ip.IsLoopback()
		}
	}
	if ok {
		return nil
	}
	return fmt.Errorf("%s: without TLS, ferry receive listens only on loopback addresses (127.0.0.1, ::1, localhost): "+
		"anyone who can reach the port could send it a guest, or read guest memory on the wire. "+
		"Give --tls-cert, --tls-key and --tls-ca (make them with 'ferry certs'), or --insecure on a network you trust", addr)
}
