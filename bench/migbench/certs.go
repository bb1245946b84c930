package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// TLS for the systems that migrate over it (ferry-tls, ferry-conns-tls,
// qemu-tls): one CA for the run, made by `ferry certs`, with one
// certificate per host (hosta, hostb: the name and the host's address),
// each usable as server and as client certificate. ferry takes them as
// --tls-cert, --tls-key and --tls-ca; QEMU's tls-creds-x509 reads the same
// files under the names it expects, from one directory per host.
type tlsCerts struct {
	dir   string
	names map[*host]string // the host's certificate: NAME.pem, NAME-key.pem
}

// makeCerts runs `ferry certs` into dir for the two hosts and lays out
// QEMU's directories (qemuDir).
func (b *bench) makeCerts(dir string) (*tlsCerts, error) {
	c := &tlsCerts{dir: dir, names: map[*host]string{}}
	args := []string{"certs", "--dir", dir}
	for _, h := range b.hosts {
		name := "host" + strings.ToLower(h.name)
		c.names[h] = name
		args = append(args, "--host", name+","+h.addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, code := runGroup(ctx, exec.Command(b.ferry, args...)); code != 0 {
		return nil, fmt.Errorf("ferry %s: exit %d: %s", strings.Join(args, " "), code, out)
	}
	for _, h := range b.hosts {
		qd := c.qemuDir(h)
		if err := os.MkdirAll(qd, 0o700); err != nil {
			return nil, err
		}
		// QEMU's names: ca-cert.pem everywhere; server-* for the
		// endpoint=server object (the destination), client-* for the
		// endpoint=client one (the source). The host's one certificate
		// serves as both, as with ferry.
		for dst, src := range map[string]string{
			"ca-cert.pem":     "ca.pem",
			"server-cert.pem": c.names[h] + ".pem",
			"server-key.pem":  c.names[h] + "-key.pem",
			"client-cert.pem": c.names[h] + ".pem",
			"client-key.pem":  c.names[h] + "-key.pem",
		} {
			if err := copyFile(filepath.Join(qd, dst), filepath.Join(dir, src)); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// ferryFlags are ferry's TLS flags for a ferry on host h.
func (c *tlsCerts) ferryFlags(h *host) []string {
	return []string{"--tls-cert", filepath.Join(c.dir, c.names[h]+".pem"),
		"--tls-key", filepath.Join(c.dir, c.names[h]+"-key.pem"),
		"--tls-ca", filepath.Join(c.dir, "ca.pem")}
}

// qemuDir is the tls-creds-x509 directory of a QEMU on host h.
func (c *tlsCerts) qemuDir(h *host) string {
	return filepath.Join(c.dir, "qemu-"+c.names[h])
}

// QEMU's two credential objects: every QEMU of a chain that runs qemu-tls
// has both (a destination becomes the next source); migrate-set-parameters
// tls-creds picks the one for its side, or "" for plain TCP.
const (
	qemuTLSServer = "tls-server"
	qemuTLSClient = "tls-client"
)

// qemuObjects are the -object arguments of a QEMU on host h.
func (c *tlsCerts) qemuObjects(h *host) []string {
	var a []string
	for _, o := range [][2]string{{qemuTLSServer, "server"}, {qemuTLSClient, "client"}} {
		a = append(a, "-object", fmt.Sprintf("tls-creds-x509,id=%s,dir=%s,endpoint=%s,verify-peer=on", o[0], c.qemuDir(h), o[1]))
	}
	return a
}

// hasConnections reports whether ferry migrate takes --connections (its
// --help mentions it).
func hasConnections(ferry string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := runGroup(ctx, exec.Command(ferry, "migrate", "--help"))
	return strings.Contains(string(out), "--connections")
}
