package tests

import (
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var (
	reDiskWrote = regexp.MustCompile(`^FERRY-DISK wrote (f\d+) (\d+) ([0-9a-f]{16})$`)
	reDiskDone  = regexp.MustCompile(`^FERRY-DISK done (ok|failed)$`)
	reDiskError = regexp.MustCompile(`^FERRY-DISK (error|mismatch)`)
)

// mkExt2 makes an empty ext2 image of size MiB with mke2fs (e2fsprogs).
func mkExt2(t *testing.T, mib int) string {
	t.Helper()
	if _, err := exec.LookPath("mke2fs"); err != nil {
		t.Fatal("mke2fs is missing: apt-get install e2fsprogs (make deps)")
	}
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(mib)<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mke2fs", "-q", "-t", "ext2", "-F", path).CombinedOutput(); err != nil {
		t.Fatalf("mke2fs: %v\n%s", err, out)
	}
	return path
}

// checkDisk checks, after the guest stopped, that the image's filesystem
// is clean (e2fsck -fn) and that every file the guest reported writing has
// the checksum the guest computed (read with debugfs, no mount).
func checkDisk(t *testing.T, img string, wrote map[string]string, want int) {
	t.Helper()
	if out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
	if len(wrote) != want {
		t.Fatalf("guest reported %d files written, want %d", len(wrote), want)
	}
	dir := t.TempDir()
	for name, sum := range wrote {
		out := filepath.Join(dir, name)
		if b, err := exec.Command("debugfs", "-R", fmt.Sprintf("dump /%s %s", name, out), img).CombinedOutput(); err != nil {
			t.Fatalf("debugfs dump %s: %v\n%s", name, err, b)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatalf("%s not on the disk: %v", name, err)
		}
		h := fnv.New64a()
		h.Write(data)
		if got := fmt.Sprintf("%016x", h.Sum64()); got != sum {
			t.Errorf("%s: checksum %s on the disk, the guest wrote %s", name, got, sum)
		}
	}
}

// diskLines collects the FERRY-DISK wrote lines of outputs, and fails on
// error or mismatch lines.
func diskLines(t *testing.T, outputs ...string) map[string]string {
	t.Helper()
	wrote := map[string]string{}
	for _, o := range outputs {
		for _, l := range strings.Split(o, "\n") {
			l = strings.TrimRight(l, "\r")
			if reDiskError.MatchString(l) {
				t.Errorf("guest: %s", l)
			}
			if m := reDiskWrote.FindStringSubmatch(l); m != nil {
				wrote[m[1]] = m[3]
			}
		}
	}
	return wrote
}

// TestDiskBoot: the guest mounts an ext2 image on virtio-blk, writes files,
// reads them back after a remount, and powers off; the host checks them.
func TestDiskBoot(t *testing.T) {
	needGuest(t)
	img := mkExt2(t, 16)
	const files = 8
	t0 := time.Now()
	p := start(t, kernelArgs("--disk", img, "--cmdline", fmt.Sprintf("ferry.run=disk ferry.files=%d", files))...)
	line, _ := p.waitFor(reDiskDone, 0, bootTimeout)
	if line != "FERRY-DISK done ok" {
		t.Fatalf("guest: %s", line)
	}
	if c := p.wait(time.Minute); c != 0 {
		t.Fatalf("ferry exited %d", c)
	}
	t.Logf("boot, %d files written, verified and power-off in %v", files, time.Since(t0).Round(time.Millisecond))
	checkDisk(t, img, diskLines(t, p.output()), files)
}

// TestDiskReadOnly: a read-only disk cannot be mounted read-write (the
// guest's writes fail), and ferry neither crashes nor changes the image.
func TestDiskReadOnly(t *testing.T) {
	needGuest(t)
	img := mkExt2(t, 16)
	before, _ := os.ReadFile(img)
	p := start(t, kernelArgs("--disk", img+",readonly", "--cmdline", "ferry.run=disk ferry.files=1")...)
	line, _ := p.waitFor(reDiskDone, 0, bootTimeout)
	if line != "FERRY-DISK done failed" || !strings.Contains(p.output(), "FERRY-DISK error mount") {
		t.Fatalf("guest on a read-only disk: %s", line)
	}
	if c := p.wait(time.Minute); c != 0 {
		t.Fatalf("ferry exited %d", c)
	}
	if after, _ := os.ReadFile(img); string(after) != string(before) {
		t.Fatal("read-only image changed")
	}
}

// TestDiskMigrate: a guest writing files to its disk continuously moves
// from host A to host B (the image is on storage both see, at the same
// path); it finishes on B, and every file it wrote on either host has its
// checksum on the disk, which checks clean.
func TestDiskMigrate(t *testing.T) {
	needGuest(t)
	h := twoHosts(t)
	img := mkExt2(t, 32)
	const files = 60
	src := &guest{sock: filepath.Join(t.TempDir(), "src.sock"), host: 0}
	src.p = h.startOn(t, 0, kernelArgs("--memory", "128M", "--api-socket", src.sock, "--memory-hash", "--disk", img,
		"--cmdline", fmt.Sprintf("ferry.run=disk ferry.files=%d", files))...)
	// Migrate while it writes: after a few files.
	src.p.waitFor(regexp.MustCompile(`^FERRY-DISK wrote f00003 `), 0, bootTimeout)
	dst, addr := receiver(t, h, 1, "--disk", img)
	statsFile := filepath.Join(t.TempDir(), "stats.json")
	migrateChecked(t, src, dst, addr, append([]string{"--stats-json", statsFile}, h.tls(0)...)...)
	onSrc := len(diskLines(t, src.p.output()))
	line, _ := dst.p.waitFor(reDiskDone, 0, 5*time.Minute)
	if line != "FERRY-DISK done ok" {
		t.Fatalf("guest after the migration: %s", line)
	}
	if c := dst.p.wait(time.Minute); c != 0 {
		t.Fatalf("destination ferry exited %d", c)
	}
	wrote := diskLines(t, src.p.output(), dst.p.output())
	t.Logf("%d files written on the source, %d on the destination", onSrc, len(wrote)-onSrc)
	if onSrc == files {
		t.Errorf("the guest finished writing before the migration: it tested nothing")
	}
	checkDisk(t, img, wrote, files)
}
