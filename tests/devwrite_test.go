package tests

import (
	"encoding/binary"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Migrations of guests whose memory ferry's own devices keep writing: the
// pages a virtio device writes are not in KVM's dirty log, only in ferry's
// own bitmap, and must reach the destination all the same. Both tests cap
// the bandwidth and give a downtime budget large enough that the sender
// checks for convergence, and reads the dirty log, in the middle of a pass.

var (
	reDiskReadAt  = regexp.MustCompile(`^FERRY-DISKREAD at (\d+)$`)
	reDiskReadBad = regexp.MustCompile(`^FERRY-DISKREAD mismatch|^FERRY-DISK error`)
	// Compression off: it shrinks the pass so much that it may end before
	// the mid-pass check has a reason to look.
	devWriteMigArg = []string{"--max-bandwidth", "16MiB/s", "--downtime", "3s", "--compress", "off"}
)

// diskWithBlockNumbers writes a raw disk image of mib MiB whose 4 KiB
// blocks start with their own number (little endian), the rest random:
// what ferry.run=diskread checks as it reads.
func diskWithBlockNumbers(t *testing.T, mib int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "stream.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewSource(int64(mib)))
	chunk := make([]byte, 1<<20)
	for m := 0; m < mib; m++ {
		rng.Read(chunk)
		for b := 0; b < len(chunk)/4096; b++ {
			binary.LittleEndian.PutUint64(chunk[b*4096:], uint64(m*256+b))
		}
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// devWriteStats checks that the sender read the dirty log in the middle
// of a pass (a peek: the check for convergence between chunks) and logs
// how the migration went.
func devWriteStats(t *testing.T, st migStats) {
	t.Helper()
	var left uint64
	peeks := 0
	for _, it := range st.Iterations {
		left += it.PagesLeft
		peeks += it.Peeks
	}
	if peeks == 0 {
		t.Errorf("no mid-pass read of the dirty log (peeks 0 in every iteration): the case under test was not exercised")
	}
	t.Logf("%d iterations, %d mid-pass peeks, %d pages left to stop-and-copy by cut passes, downtime %.1f ms",
		len(st.Iterations), peeks, left, st.DowntimeMS)
}

// TestMigrateDiskStream: a 128 MiB guest reads its 192 MiB disk through
// the page cache in a loop, so virtio-blk writes guest pages all the time,
// while it is migrated at 16 MiB/s with a 3 s budget. The destination's RAM
// must equal the paused source's, and the guest goes on reading there,
// every block with its own number.
func TestMigrateDiskStream(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	img := diskWithBlockNumbers(t, 192)
	src := &guest{sock: filepath.Join(t.TempDir(), "src.sock"), host: 0}
	src.p = h.startOn(t, 0, kernelArgs("--memory", "128M", "--api-socket", src.sock, "--memory-hash",
		"--disk", img, "--cmdline", "ferry.run=diskread")...)
	src.p.waitFor(reCounter, 0, bootTimeout)
	src.p.waitFor(reDiskReadAt, 0, 2*time.Minute)
	dst, addr := receiver(t, h, 1, "--disk", img)
	st := migrateTo(t, h, src, dst, addr, devWriteMigArg...)
	devWriteStats(t, st)

	// The reader goes on at the destination: 16 MiB more.
	_, i := dst.p.waitFor(reDiskReadAt, 0, 2*time.Minute)
	_, i = dst.p.waitFor(reDiskReadAt, i+1, 2*time.Minute)
	dst.p.waitFor(reDiskReadAt, i+1, 2*time.Minute)
	for _, g := range []*guest{src, dst} {
		if l, _, ok := findLine(g.p, reDiskReadBad); ok {
			t.Errorf("guest on host %d: %s", g.host, l)
		}
	}
}

// TestMigrateNetFlood: a guest on virtio-net receives a flood of UDP
// frames from its host (ferry writes each into a receive buffer in guest
// memory) while it is migrated at 16 MiB/s with a 3 s budget. The
// destination's RAM must equal the paused source's, and the guest's own
// pings go on there.
func TestMigrateNetFlood(t *testing.T) {
	needGuest(t)
	if os.Geteuid() != 0 {
		t.Skip("skipped: creating tap interfaces needs root")
	}
	h := twoHosts(t)
	if h.ns[0] == "" {
		t.Skip("skipped: needs network namespaces (iproute2, root)")
	}
	addTap(t, h, 0)
	addTap(t, h, 1)
	src := &guest{sock: filepath.Join(t.TempDir(), "src.sock"), host: 0}
	src.p = h.startOn(t, 0, kernelArgs("--memory", "128M", "--api-socket", src.sock, "--memory-hash",
		"--net", "tap="+netTap, "--cmdline", netCmdline)...)
	src.p.waitFor(reNetUp, 0, bootTimeout)
	src.p.waitFor(regexp.MustCompile(`^\d+ bytes from 10\.0\.2\.1: seq=3 `), 0, time.Minute)

	sent := floodUDP(t, h.ns[0], "10.0.2.2:9", 4000)
	time.Sleep(2 * time.Second)
	if sent.Load() == 0 {
		t.Fatal("the flood sent nothing")
	}
	dst, addr := receiver(t, h, 1, "--net", "tap="+netTap)
	before := sent.Load()
	statsFile := filepath.Join(t.TempDir(), "stats.json")
	migrateChecked(t, src, dst, addr, append(append([]string{"--stats-json", statsFile}, h.tls(0)...), devWriteMigArg...)...)
	devWriteStats(t, readStats(t, statsFile))
	t.Logf("%d frames sent to the guest during the migration", sent.Load()-before)

	// The guest's ping goes on at the destination: 5 more replies (any of
	// them may be lost under the flood).
	seqs := pingSeqs(src.p.output())
	last := seqs[len(seqs)-1]
	for from := 0; ; {
		line, i := dst.p.waitFor(rePingSeq, from, 2*time.Minute)
		if seq, _ := strconv.Atoi(rePingSeq.FindStringSubmatch(line)[1]); seq >= last+5 {
			break
		}
		from = i + 1
	}
}

// floodUDP sends UDP datagrams of 1400 bytes to addr from network
// namespace ns, about rate per second, until the test ends; it returns
// the count sent. The socket is made on a thread moved into ns (a socket
// stays in the namespace it was made in).
func floodUDP(t *testing.T, ns, addr string, rate int) *atomic.Int64 {
	t.Helper()
	var sent atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		defer close(done)
		// The thread stays locked: it ends with the goroutine, never
		// running other goroutines in the namespace.
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
		}
		var c net.Conn
		if err == nil {
			c, err = net.Dial("udp", addr)
		}
		ready <- err
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1400)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			for i := 0; i < rate/100; i++ {
				binary.BigEndian.PutUint64(buf, uint64(sent.Load()))
				if _, err := c.Write(buf); err == nil {
					sent.Add(1)
				}
			}
		}
	}()
	if err := <-ready; err != nil {
		t.Fatalf("flood from namespace %s: %v", ns, err)
	}
	t.Cleanup(func() { close(stop); <-done })
	return &sent
}

// findLine returns the first line of p's output matching re.
func findLine(p *proc, re *regexp.Regexp) (string, int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, l := range p.lines {
		if re.MatchString(l) {
			return l, i, true
		}
	}
	return "", 0, false
}
