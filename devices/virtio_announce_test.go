package devices

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestAnnounceFrame(t *testing.T) {
	mac := [6]byte{0x52, 0x54, 0x00, 0xfe, 0x00, 0x01}
	want := []byte{
		0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // destination: broadcast
		0x52, 0x54, 0x00, 0xfe, 0x00, 0x01, // source: the guest
		0x80, 0x35, // RARP
		0x00, 0x01, // Ethernet
		0x08, 0x00, // IPv4
		6, 4, // address lengths
		0x00, 0x03, // request reverse
		0x52, 0x54, 0x00, 0xfe, 0x00, 0x01, 0, 0, 0, 0, // sender MAC, IP
		0x52, 0x54, 0x00, 0xfe, 0x00, 0x01, 0, 0, 0, 0, // target MAC, IP
	}
	want = append(want, make([]byte, 60-len(want))...)
	if got := AnnounceFrame(mac); !bytes.Equal(got, want) {
		t.Fatalf("frame\n%x, want\n%x", got, want)
	}
}

// TestNetAnnounce: Announce returns at once and the frames reach the
// "tap" (a socket pair here) announceGap apart.
func TestNetAnnounce(t *testing.T) {
	r := newNetRig(t)
	start := time.Now()
	r.n.Announce()
	if d := time.Since(start); d > 20*time.Millisecond {
		t.Fatalf("Announce took %v", d)
	}
	// The peer is a blocking file (no read deadline): poll before reading.
	pfd := []unix.PollFd{{Fd: int32(r.peer.Fd()), Events: unix.POLLIN}}
	buf := make([]byte, 2000)
	for i := 0; i < announceCount; i++ {
		if k, err := unix.Poll(pfd, 5000); k != 1 {
			t.Fatalf("frame %d not sent (poll %d, %v)", i, k, err)
		}
		n, err := r.peer.Read(buf)
		if err != nil || !bytes.Equal(buf[:n], AnnounceFrame(r.n.mac)) {
			t.Fatalf("frame %d: %x (%v)", i, buf[:n], err)
		}
	}
	if d := time.Since(start); d < (announceCount-1)*announceGap {
		t.Fatalf("%d frames in %v: not %v apart", announceCount, d, announceGap)
	}
	if k, err := unix.Poll(pfd, int(3*announceGap/time.Millisecond)); k != 0 || err != nil {
		t.Fatalf("a frame too many (poll %d, %v)", k, err)
	}
}

// TestNetAnnounceTap announces on a real tap interface (root) and
// captures the frames with a packet socket on it: what a bridge the tap
// is a port of would receive.
func TestNetAnnounceTap(t *testing.T) {
	name := fmt.Sprintf("fyann%d", os.Getpid()%100000)
	tap, err := OpenTap(name)
	if err != nil {
		t.Skipf("no tap: %v", err)
	}
	n := NewNet(name, tap, [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})
	defer n.Close() // removes the tap
	if err := setLinkUp(name); err != nil {
		t.Fatal(err)
	}
	const rarpBE = 0x3580 // htons(0x8035)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, rarpBE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: rarpBE, Ifindex: ifi.Index}); err != nil {
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	n.Announce()
	buf := make([]byte, 2000)
	for i := 0; i < announceCount; i++ {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(buf[:k], AnnounceFrame(n.mac)) {
			t.Fatalf("frame %d on %s: %x", i, name, buf[:k])
		}
	}
}

func setLinkUp(name string) error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: SIOCGIFFLAGS: %w", name, err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("%s: SIOCSIFFLAGS: %w", name, err)
	}
	return nil
}
