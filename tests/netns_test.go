package tests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hosts are two "hosts" for migration tests: two network namespaces joined
// by a veth pair, each with one address on the pair. Without root (or
// iproute2) both hosts are this machine, on loopback. Each host has a
// certificate from one CA (made with `ferry certs`) for mutual TLS.
type hosts struct {
	ns    [2]string // namespace names, "" for the current one
	addr  [2]string // each host's address on the link
	certs string    // ferry certs --dir
}

// twoHosts creates the namespaces and removes them when the test ends.
func twoHosts(t *testing.T) *hosts {
	t.Helper()
	h := &hosts{addr: [2]string{"127.0.0.1", "127.0.0.1"}}
	defer h.makeCerts(t)
	if os.Geteuid() != 0 {
		t.Log("not root: both hosts are this machine, on loopback")
		return h
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("iproute2's ip is missing: apt-get install iproute2")
	}
	id := fmt.Sprintf("%d%d", os.Getpid()%10000, len(t.Name())%10)
	h.ns = [2]string{"ferry-a-" + id, "ferry-b-" + id}
	h.addr = [2]string{"10.231.0.1", "10.231.0.2"}
	va, vb := "fva"+id, "fvb"+id
	registerLink(va)
	registerLink(vb)
	t.Cleanup(func() {
		for _, ns := range h.ns {
			exec.Command("ip", "netns", "del", ns).Run()
		}
		// (moved into the namespaces, the veth ends go with them)
		for _, l := range []string{va, vb} {
			if linkExists(l) {
				exec.Command("ip", "link", "del", l).Run()
			}
		}
	})
	for _, ns := range h.ns {
		if err := addNetns(ns); err != nil {
			t.Fatal(err)
		}
	}
	cmds := [][]string{
		{"link", "add", va, "type", "veth", "peer", "name", vb},
		{"link", "set", va, "netns", h.ns[0]},
		{"link", "set", vb, "netns", h.ns[1]},
		{"-n", h.ns[0], "addr", "add", h.addr[0] + "/24", "dev", va},
		{"-n", h.ns[1], "addr", "add", h.addr[1] + "/24", "dev", vb},
		{"-n", h.ns[0], "link", "set", va, "up"},
		{"-n", h.ns[1], "link", "set", vb, "up"},
		{"-n", h.ns[0], "link", "set", "lo", "up"},
		{"-n", h.ns[1], "link", "set", "lo", "up"},
	}
	for _, c := range cmds {
		if out, err := runTracked("ip", c...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return h
}

// startOn runs ferry with args on host i.
func (h *hosts) startOn(t *testing.T, i int, args ...string) *proc {
	t.Helper()
	if h.ns[i] == "" {
		return start(t, args...)
	}
	return startCmd(t, "ip", append([]string{"netns", "exec", h.ns[i], ferryBin}, args...)...)
}

// makeCerts runs `ferry certs` for both hosts' addresses.
func (h *hosts) makeCerts(t *testing.T) {
	t.Helper()
	if t.Failed() {
		return
	}
	h.certs = filepath.Join(t.TempDir(), "certs")
	args := []string{"certs", "--dir", h.certs, "--host", h.addr[0]}
	if h.addr[1] != h.addr[0] {
		args = append(args, "--host", h.addr[1])
	}
	if out, code := runFerry(t, args...); code != 0 {
		t.Fatalf("ferry certs: exit %d: %s", code, out)
	}
}

// tls are the mutual-TLS flags for a ferry on host i.
func (h *hosts) tls(i int) []string {
	return tlsArgs(h.certs, h.addr[i])
}

// tlsArgs are the TLS flags for the certificate of host in dir.
func tlsArgs(dir, host string) []string {
	return []string{
		"--tls-cert", filepath.Join(dir, host+".pem"),
		"--tls-key", filepath.Join(dir, host+"-key.pem"),
		"--tls-ca", filepath.Join(dir, "ca.pem"),
	}
}
