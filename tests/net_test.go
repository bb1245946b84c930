package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	reNetUp   = regexp.MustCompile(`^FERRY-NET up `)
	rePingSeq = regexp.MustCompile(`^\d+ bytes from 10\.0\.2\.1: seq=(\d+) `)
)

const (
	netTap     = "fertap0"
	netTapMAC  = "02:00:00:00:02:01" // the same "gateway" on both hosts
	netCmdline = "ferry.run=net ferry.ip=10.0.2.2/24 ferry.peer=10.0.2.1 ferry.interval=0.2"
)

// addTap creates the tap netTap (10.0.2.1/24) on host i.
func addTap(t *testing.T, h *hosts, i int) {
	t.Helper()
	ip := func(args ...string) {
		if h.ns[i] != "" {
			args = append([]string{"-n", h.ns[i]}, args...)
		}
		if out, err := runTracked("ip", args...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if h.ns[i] == "" {
		registerLink(netTap)
		t.Cleanup(func() { exec.Command("ip", "link", "del", netTap).Run() })
	} // (in a namespace, the tap goes with it)
	ip("tuntap", "add", "dev", netTap, "mode", "tap")
	ip("link", "set", netTap, "address", netTapMAC)
	ip("addr", "add", "10.0.2.1/24", "dev", netTap)
	ip("link", "set", netTap, "up")
}

// hostPing pings the guest from host i.
func hostPing(t *testing.T, h *hosts, i int) {
	t.Helper()
	args := []string{"/bin/busybox", "ping", "-c", "3", "-W", "10", "10.0.2.2"} // iputils may be absent
	if h.ns[i] != "" {
		args = append([]string{"ip", "netns", "exec", h.ns[i]}, args...)
	}
	out, err := runTracked(args[0], args[1:]...)
	if err != nil {
		t.Fatalf("host %d: %s: %v\n%s", i, strings.Join(args, " "), err, out)
	}
	t.Logf("host %d pings the guest: %s", i, lastLine(string(out)))
}

// pingSeqs are the sequence numbers of the guest's ping replies in output.
func pingSeqs(output string) []int {
	var seqs []int
	for _, l := range strings.Split(output, "\n") {
		if m := rePingSeq.FindStringSubmatch(strings.TrimRight(l, "\r")); m != nil {
			n, _ := strconv.Atoi(m[1])
			seqs = append(seqs, n)
		}
	}
	return seqs
}

// TestNetMigratePing: the guest on a virtio-net device (tap in host A's
// namespace) pings the host every 200 ms and the host pings it; the guest
// moves to host B (its own tap, same addresses) with its ping running;
// both directions work afterwards. Lost pings are counted and logged.
func TestNetMigratePing(t *testing.T) {
	needGuest(t)
	if os.Geteuid() != 0 {
		t.Skip("skipped: creating tap interfaces needs root")
	}
	h := twoHosts(t)
	addTap(t, h, 0)
	src := &guest{sock: filepath.Join(t.TempDir(), "src.sock"), host: 0}
	src.p = h.startOn(t, 0, kernelArgs("--memory", "128M", "--api-socket", src.sock, "--memory-hash",
		"--net", "tap="+netTap, "--cmdline", netCmdline)...)
	src.p.waitFor(reNetUp, 0, bootTimeout)
	src.p.waitFor(regexp.MustCompile(`^\d+ bytes from 10\.0\.2\.1: seq=5 `), 0, time.Minute)
	hostPing(t, h, 0)

	if h.ns[0] == "" {
		t.Log("not in namespaces: the migration test needs two hosts")
		return
	}
	addTap(t, h, 1)
	dst, addr := receiver(t, h, 1, "--net", "tap="+netTap)
	migrateChecked(t, src, dst, addr, h.tls(0)...)
	before := pingSeqs(src.p.output())
	last := before[len(before)-1]
	// The guest's ping goes on: 25 more replies on host B.
	dst.p.waitFor(regexp.MustCompile(`^\d+ bytes from 10\.0\.2\.1: seq=`+strconv.Itoa(last+25)+` `), 0, 2*time.Minute)
	hostPing(t, h, 1)
	after := pingSeqs(dst.p.output())
	got := map[int]bool{}
	for _, s := range append(before, after...) {
		got[s] = true
	}
	first, end := before[0], after[len(after)-1]
	lost := 0
	for s := first; s <= end; s++ {
		if !got[s] {
			lost++
		}
	}
	t.Logf("guest ping: seq %d..%d, %d replies on host A, %d on host B (first seq=%d), %d lost across the migration",
		first, end, len(before), len(after), after[0], lost)
	if lost > 25 {
		t.Errorf("%d pings lost", lost)
	}
}
