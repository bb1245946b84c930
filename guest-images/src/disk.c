/* ferry.run=disk and ferry.run=diskread: workloads on the virtio-blk disk /dev/vda. */
#include "guest.h"

/* ------------------------------------------------------------- disk ---- */

/* FNV-1a 64: the checksum the tests recompute on the host. */
static uint64_t fnv64(const unsigned char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

static int disk_fail(const char *what, const char *path)
{
	say("FERRY-DISK error %s %s: %s\n", what, path, strerror(errno));
	return -1;
}

/*
 * ferry.run=disk: mount /dev/vda (ext2) on /mnt, write ferry.files files of
 * ferry.fsize bytes (each fsync'ed, then "FERRY-DISK wrote <name> <size>
 * <fnv64>"), unmount, mount again and read every file back ("FERRY-DISK
 * verified <n> files" or "FERRY-DISK mismatch <name>"), unmount, then
 * "FERRY-DISK done" and restart the machine.
 */
void run_disk(void)
{
	long files = parse_long(param("ferry.files", "8"), 8, 1, 100000);
	long fsize = parse_long(param("ferry.fsize", "65536"), 65536, 1, 16 << 20);
	static uint64_t sums[100000];
	unsigned char *buf = malloc((size_t)fsize);
	char path[64];
	int ok = 1, mounted = 0;

	mkdir("/mnt", 0755);
	/* The disk may be probed after init starts: retry for a while. */
	for (int i = 0; i < 50 && !mounted; i++) {
		if (mount("/dev/vda", "/mnt", "ext2", 0, NULL) == 0)
			mounted = 1;
		else
			sleep_until(now_ns() + 100 * 1000 * 1000ULL);
	}
	if (!buf || !mounted) {
		disk_fail("mount", "/dev/vda");
		ok = 0;
		goto out;
	}
	say("FERRY-DISK mounted files=%ld size=%ld\n", files, fsize);
	rng_state ^= now_ns();
	for (long n = 0; n < files && ok; n++) {
		for (long i = 0; i < fsize; i += 8) {
			uint64_t r = rng();
			memcpy(buf + i, &r, (size_t)(fsize - i < 8 ? fsize - i : 8));
		}
		snprintf(path, sizeof(path), "/mnt/f%05ld", n);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || write(fd, buf, (size_t)fsize) != fsize || fsync(fd) < 0) {
			ok = 0;
			disk_fail("write", path);
		}
		if (fd >= 0)
			close(fd);
		sums[n] = fnv64(buf, (size_t)fsize);
		if (ok)
			say("FERRY-DISK wrote %s %ld %016llx\n", path + 5, fsize,
			    (unsigned long long)sums[n]);
	}
	sync();
	if (umount("/mnt") < 0 || mount("/dev/vda", "/mnt", "ext2", 0, NULL) < 0) {
		disk_fail("remount", "/mnt");
		ok = 0;
		goto out;
	}
	long verified = 0;
	for (long n = 0; n < files && ok; n++) {
		snprintf(path, sizeof(path), "/mnt/f%05ld", n);
		int fd = open(path, O_RDONLY);
		ssize_t r = fd < 0 ? -1 : read(fd, buf, (size_t)fsize);
		if (fd >= 0)
			close(fd);
		if (r != fsize || fnv64(buf, (size_t)fsize) != sums[n]) {
			say("FERRY-DISK mismatch %s\n", path + 5);
			ok = 0;
		} else {
			verified++;
		}
	}
	say("FERRY-DISK verified %ld files\n", verified);
	if (umount("/mnt") < 0)
		disk_fail("umount", "/mnt");
	sync();
out:
	say("FERRY-DISK done %s\n", ok ? "ok" : "failed");
	machine_restart();
}


/*
 * ferry.run=diskread: counter lines, plus a child that reads the raw disk
 * /dev/vda from start to end through the page cache, again and again
 * (what `while :; do cat /dev/vda >/dev/null; done` does, in one process).
 * Every page the disk delivers is written into guest memory by the VMM's
 * virtio-blk device, not by the guest: the migration tests use it to move a
 * guest whose memory the device keeps writing. With a disk larger than the
 * guest's RAM, the page cache keeps recycling its pages.
 *
 * The tests fill the disk so that the first 8 bytes of each 4 KiB block
 * hold the block's number (little endian); the reader checks them, which
 * costs one compare per block. It prints "FERRY-DISKREAD at <MiB>" every
 * 8 MiB, "FERRY-DISKREAD pass <n> done <MiB> MiB <bad> bad blocks" at the
 * end of a pass, and "FERRY-DISKREAD mismatch block <b>: <value>" for the
 * first few blocks whose number is wrong.
 */
static void disk_reader(void)
{
	static unsigned char buf[64 << 10];
	int fd = -1;

	for (int i = 0; i < 50 && fd < 0; i++) {
		fd = open("/dev/vda", O_RDONLY);
		if (fd < 0)
			sleep_until(now_ns() + 100 * 1000 * 1000ULL);
	}
	if (fd < 0) {
		disk_fail("open", "/dev/vda");
		_exit(1);
	}
	for (unsigned long pass = 1;; pass++) {
		uint64_t block = 0, bad = 0;
		ssize_t n;

		if (lseek(fd, 0, SEEK_SET) < 0) {
			disk_fail("lseek", "/dev/vda");
			_exit(1);
		}
		while ((n = read(fd, buf, sizeof(buf))) > 0) {
			for (ssize_t off = 0; off + 8 <= n; off += PAGE_SIZE, block++) {
				uint64_t v;

				memcpy(&v, buf + off, 8);
				if (v != block && bad++ < 4)
					say("FERRY-DISKREAD mismatch block %llu: %llu\n",
					    (unsigned long long)block, (unsigned long long)v);
			}
			if (block % (8 << 20 >> 12) == 0)
				say("FERRY-DISKREAD at %llu\n", (unsigned long long)(block >> 8));
		}
		if (n < 0) {
			disk_fail("read", "/dev/vda");
			_exit(1);
		}
		say("FERRY-DISKREAD pass %lu done %llu MiB %llu bad blocks\n", pass,
		    (unsigned long long)(block >> 8), (unsigned long long)bad);
	}
}

void run_diskread(void)
{
	pid_t pid = fork();

	if (pid < 0) {
		say("ferry-diskread: fork: %s (counter only)\n", strerror(errno));
	} else if (pid == 0) {
		child_signals();
		disk_reader();
		_exit(0);
	}
	counter_loop();
}
