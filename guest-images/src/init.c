/*
 * ferry guest /init: a small static program (musl) that prepares the guest
 * and runs one of the workloads that ferry's tests and benchmarks need.
 *
 * It prints FERRY-GUEST-READY as its first act, mounts /proc, /sys and
 * devtmpfs on /dev, then acts on ferry.run= from /proc/cmdline:
 *
 *   poweroff  restart the machine (reboot(RB_AUTOBOOT), kernel parameter
 *             reboot=k: the i8042 reset); a VMM without ACPI, like ferry or
 *             Firecracker, exits on it with status 0
 *   shell     busybox sh on the serial console, with a controlling tty
 *   counter   "FERRY-COUNTER <n>" every 100 ms
 *   dirty     counter lines, plus a child that writes guest memory at a
 *             given rate (ferry.mode, ferry.ws, ferry.rate, ferry.same,
 *             ferry.hot; see README.md)
 *   (other)   a message, then the shell
 *
 * Every line it prints goes out with a single write(), so lines from the
 * counter and the memory writer never mix. System calls are expensive in
 * the emulated guests this runs in: the hot loops avoid them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MARKER "FERRY-GUEST-READY"
#define PAGE_SIZE 4096UL
#define WORDS_PER_PAGE (PAGE_SIZE / sizeof(uint64_t))
#define NSEC 1000000000ULL

static char cmdline[4096];
static const char *console_path = "/dev/console";

/* ------------------------------------------------------------ output ---- */

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* Format one line (or a few) and print it with one write(). */
__attribute__((format(printf, 1, 2)))
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(buf))
		n = sizeof(buf) - 1;
	write_all(1, buf, (size_t)n);
}

/* Make fds 0, 1 and 2 the terminal at path. */
static int attach_stdio(const char *path, int flags)
{
	int fd = open(path, O_RDWR | flags);

	if (fd < 0)
		return -1;
	for (int i = 0; i < 3; i++)
		if (fd != i)
			dup2(fd, i);
	if (fd > 2)
		close(fd);
	return 0;
}

/* ---------------------------------------------------------- machine ---- */

/*
 * Restart the machine. ferry has no ACPI and no power-off device: the guest
 * ends by restarting (kernel parameter reboot=k: the kernel writes 0xFE to
 * the i8042 command port 0x64), and the VMM exits with status 0 on that.
 * QEMU needs -no-reboot to do the same.
 */
static void machine_restart(void)
{
	tcdrain(1);		/* the last lines must leave the UART first */
	sync();
	reboot(RB_AUTOBOOT);
	say("ferry-init: reboot(RB_AUTOBOOT): %s; trying RB_POWER_OFF\n", strerror(errno));
	tcdrain(1);
	reboot(RB_POWER_OFF);
	say("ferry-init: reboot(RB_POWER_OFF): %s; halting here\n", strerror(errno));
	for (;;)
		pause();
}

/*
 * busybox's reboot, poweroff and halt (without -f) signal PID 1: SIGTERM,
 * SIGUSR2, SIGUSR1. All three end the machine the one way the VMM
 * understands, a restart. SIGINT is what the kernel sends for Ctrl-Alt-Del.
 */
static void on_shutdown_signal(int sig)
{
	static const char msg[] = "ferry-init: shutdown requested, restarting the machine\n";

	(void)sig;
	write_all(1, msg, sizeof(msg) - 1);
	machine_restart();
}

static volatile sig_atomic_t child_exited;

static void on_sigchld(int sig)
{
	(void)sig;
	child_exited = 1;
}

static void set_signal(int sig, void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

static void try_mount(const char *src, const char *dir, const char *type,
		      unsigned long flags, const char *data)
{
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		say("ferry-init: mkdir %s: %s\n", dir, strerror(errno));
	if (mount(src, dir, type, flags, data) < 0 && errno != EBUSY)
		say("ferry-init: mount %s on %s: %s (going on)\n", type, dir, strerror(errno));
}

/* --------------------------------------------------------- cmdline ---- */

static void read_cmdline(void)
{
	int fd = open("/proc/cmdline", O_RDONLY);
	ssize_t n = 0, r;

	if (fd < 0) {
		say("ferry-init: /proc/cmdline: %s (no ferry.* parameters)\n", strerror(errno));
		return;
	}
	while (n < (ssize_t)sizeof(cmdline) - 1 &&
	       (r = read(fd, cmdline + n, sizeof(cmdline) - 1 - (size_t)n)) > 0)
		n += r;
	close(fd);
	cmdline[n] = '\0';
	for (ssize_t i = 0; i < n; i++)
		if (cmdline[i] == '\n' || cmdline[i] == '\t')
			cmdline[i] = ' ';
}

/*
 * Value of "name=value" on the kernel command line (the last one wins, as
 * for the kernel's own parameters), as a string of its own, or def.
 */
static const char *param(const char *name, const char *def)
{
	size_t len = strlen(name);
	const char *found = NULL, *p = cmdline;
	size_t found_len = 0;

	while (*p) {
		while (*p == ' ')
			p++;
		const char *tok = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - tok) > len && strncmp(tok, name, len) == 0 && tok[len] == '=') {
			found = tok + len + 1;
			found_len = (size_t)(p - found);
		}
	}
	if (!found)
		return def;
	char *v = strndup(found, found_len);
	return v ? v : def;
}

/* "96M", "512K", "1G", "4096" (bytes); 0 if malformed. */
static uint64_t parse_size(const char *s)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return 0;
	switch (*end) {
	case 'k': case 'K': v <<= 10; end++; break;
	case 'm': case 'M': v <<= 20; end++; break;
	case 'g': case 'G': v <<= 30; end++; break;
	}
	if (*end == 'i')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	return *end ? 0 : v;
}

static long parse_long(const char *s, long def, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return def;
	return v;
}

/* ------------------------------------------------------------ clock ---- */

/* CLOCK_MONOTONIC in ns; through the vDSO, so no system call. */
static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / NSEC), .tv_nsec = (long)(t % NSEC) };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* ------------------------------------------------------------ shell ---- */

static void exec_shell(void)
{
	char *argv[] = { "sh", NULL };
	char *envp[] = {
		"HOME=/root", "PATH=/bin", "TERM=vt100", "SHELL=/bin/sh",
		"PS1=ferry:\\w# ", NULL
	};

	setsid();
	/*
	 * A tty of our own (not /dev/console, which cannot be a controlling
	 * terminal) so that the shell has job control and Ctrl-C works.
	 */
	if (attach_stdio(console_path, 0) == 0)
		ioctl(0, TIOCSCTTY, 1);
	chdir("/root");
	execve("/bin/sh", argv, envp);
	execve("/bin/busybox", (char *[]){ "sh", NULL }, envp);
	say("ferry-init: cannot run /bin/sh: %s\n", strerror(errno));
	_exit(127);
}

static void run_shell(void)
{
	for (;;) {
		pid_t pid = fork(), w;
		int status;

		if (pid < 0) {
			say("ferry-init: fork: %s\n", strerror(errno));
			sleep(1);
			continue;
		}
		if (pid == 0) {
			set_signal(SIGTERM, SIG_DFL);
			set_signal(SIGUSR1, SIG_DFL);
			set_signal(SIGUSR2, SIG_DFL);
			set_signal(SIGINT, SIG_DFL);
			set_signal(SIGCHLD, SIG_DFL);
			exec_shell();
		}
		/* PID 1 reaps every orphan too. */
		do {
			w = wait(&status);
		} while (w != pid && !(w < 0 && errno == ECHILD));
		say("ferry-init: shell exited; starting a new one\n");
		sleep(1);
	}
}

/* ---------------------------------------------------------- counter ---- */

static void reap_children(void)
{
	int status;
	pid_t w;

	child_exited = 0;
	while ((w = waitpid(-1, &status, WNOHANG)) > 0) {
		if (WIFEXITED(status))
			say("ferry-init: child %d exited with status %d\n", (int)w, WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			say("ferry-init: child %d killed by signal %d\n", (int)w, WTERMSIG(status));
	}
}

/* "FERRY-COUNTER <n>" every 100 ms, on absolute deadlines: no drift. */
static void counter_loop(void)
{
	const uint64_t period = 100 * 1000 * 1000ULL;
	uint64_t next = now_ns();

	for (unsigned long n = 0;; n++) {
		char buf[40];
		int len = snprintf(buf, sizeof(buf), "FERRY-COUNTER %lu\n", n);

		write_all(1, buf, (size_t)len);
		next += period;
		uint64_t now = now_ns();
		/*
		 * More than a second late (the guest was paused, or migrated):
		 * go on from now rather than printing the missed lines in a burst.
		 */
		if (now > next + NSEC)
			next = now;
		sleep_until(next);
		if (child_exited)
			reap_children();
	}
}

/* ------------------------------------------------------------ dirty ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

/* xorshift64*: a fast generator, good enough to pick pages and words. */
static inline uint64_t rng(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545f4914f6cdd1dULL;
}

struct dirty_cfg {
	const char *mode;
	uint64_t ws;		/* working set, bytes */
	uint64_t hot;		/* hot set (mode hot), bytes */
	long rate;		/* page writes per second */
	long same;		/* percent of writes that store the value already there */
	long samepages;		/* percent of pages only ever rewritten unchanged; -1: off */
	long chg;		/* bytes a changing write alters */
};

/*
 * With ferry.samepages=P the choice between an unchanged rewrite and a
 * change is made per page, not per write: page p (a fixed hash of its
 * index) is either one of the P% "same" pages, which are only ever
 * rewritten with the bytes already there, or one of the others, which
 * change at every write. The share of false-dirty pages then stays P% however
 * often a page is written during an iteration (with a per-write share it
 * falls, since one changing write among several dirties the page).
 */
static int same_page(uint64_t p, long samepages)
{
	return (long)(((p * 0x9e3779b97f4a7c15ULL) >> 40) % 100) < samepages;
}

/*
 * A changing write of n bytes at b: every byte becomes the first byte's
 * old value + 1 (never 0), so the first byte always changes and the
 * others almost always. One string instruction (rep stosb), cheap in an
 * emulated guest whatever n is.
 */
static void change_bytes(unsigned char *b, size_t n)
{
	unsigned char v = (unsigned char)(b[0] + 1);

	if (v == 0)
		v = 1;
	__asm__ volatile("rep stosb" : "+D"(b), "+c"(n) : "a"(v) : "memory");
}

/*
 * Touch and fill every page of the working set with non-zero data that
 * differs from page to page. Writing all 512 words of every page costs
 * ~10 instructions a word, which at ~1 million emulated instructions/s
 * would take half a minute per 32 MiB; instead the first page is filled
 * word by word, every other page is a copy of it (memcpy: a string
 * instruction) with 8 words of its own, one per 512 bytes.
 */
static void fill_working_set(uint64_t *mem, uint64_t pages)
{
	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++)
		mem[w] = rng() | 1;
	for (uint64_t p = 1; p < pages; p++) {
		uint64_t *pg = mem + p * WORDS_PER_PAGE;

		memcpy(pg, mem, PAGE_SIZE);
		for (uint64_t w = 0; w < WORDS_PER_PAGE; w += 64)
			pg[w] = rng() | 1;
	}
}

static void dirty_report(const struct dirty_cfg *c, uint64_t writes, uint64_t same,
			 uint64_t elapsed_ns)
{
	uint64_t actual = elapsed_ns ? writes * NSEC / elapsed_ns : 0;
	uint64_t pct = writes ? (same * 100 + writes / 2) / writes : 0;

	say("FERRY-DIRTY mode=%s ws=%llu target=%ld/s actual=%llu/s same=%llu%%\n",
	    c->mode, (unsigned long long)(c->ws >> 20), c->rate,
	    (unsigned long long)actual, (unsigned long long)pct);
}

static void dirty_writer(const struct dirty_cfg *c)
{
	const uint64_t report_every = 5 * NSEC;
	uint64_t pages = c->ws / PAGE_SIZE;
	uint64_t t_fill = now_ns();
	uint64_t *mem = mmap(NULL, pages * PAGE_SIZE, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (mem == MAP_FAILED) {
		say("ferry-dirty: mmap %llu bytes: %s\n",
		    (unsigned long long)(pages * PAGE_SIZE), strerror(errno));
		_exit(1);
	}
	uint64_t t_mapped = now_ns();
	rng_state ^= t_mapped;
	fill_working_set(mem, pages);
	say("ferry-dirty: %llu pages mapped in %llu ms, filled in %llu ms\n",
	    (unsigned long long)pages, (unsigned long long)((t_mapped - t_fill) / 1000000),
	    (unsigned long long)((now_ns() - t_mapped) / 1000000));

	if (strcmp(c->mode, "idle") == 0) {
		for (;;) {
			dirty_report(c, 0, 0, 0);
			sleep_until(now_ns() + report_every);
		}
	}

	/* hot: every write lands in the first c->hot bytes. */
	uint64_t span = pages;
	if (strcmp(c->mode, "hot") == 0) {
		span = c->hot / PAGE_SIZE;
		if (span == 0)
			span = 1;
		if (span > pages)
			span = pages;
	}
	/* Writes between two looks at the clock: ~50 batches/s, <= 256. */
	uint64_t batch = (uint64_t)c->rate / 50;
	if (batch < 1)
		batch = 1;
	if (batch > 256)
		batch = 256;
	/* same% as a threshold on 16 random bits */
	uint64_t same_threshold = ((uint64_t)c->same << 16) / 100;

	uint64_t t0 = now_ns(), issued = 0;
	uint64_t iv_start = t0, iv_writes = 0, iv_same = 0;
	/* The first report comes after 1 s, so a benchmark can start early. */
	uint64_t iv_len = NSEC;

	for (;;) {
		for (uint64_t i = 0; i < batch; i++) {
			uint64_t r = rng();
			uint64_t p = (r >> 32) % span;
			volatile uint64_t *word = mem + p * WORDS_PER_PAGE
						  + (r & (WORDS_PER_PAGE - 1));
			int same = c->samepages >= 0 ? same_page(p, c->samepages)
						     : ((r >> 9) & 0xffff) < same_threshold;

			if (same) {
				*word = *word;	/* dirty, but unchanged */
				iv_same++;
			} else if (c->chg <= 8) {
				*word = *word + 0x9e3779b97f4a7c15ULL;	/* a new value */
			} else {
				/* chg bytes from this word on, within the page */
				uint64_t off = (r & (WORDS_PER_PAGE - 1)) * 8;

				if (off > PAGE_SIZE - (uint64_t)c->chg)
					off = PAGE_SIZE - (uint64_t)c->chg;
				change_bytes((unsigned char *)(mem + p * WORDS_PER_PAGE) + off,
					     (size_t)c->chg);
			}
		}
		issued += batch;
		iv_writes += batch;

		uint64_t now = now_ns();
		uint64_t due = t0 + issued * NSEC / (uint64_t)c->rate;

		if (due > now) {
			sleep_until(due);
		} else if (now - due > NSEC) {
			/* Too slow for the target: no catching-up burst later. */
			t0 = now;
			issued = 0;
		}
		if (now - iv_start >= iv_len) {
			dirty_report(c, iv_writes, iv_same, now - iv_start);
			iv_start = now;
			iv_len = report_every;
			iv_writes = iv_same = 0;
			/* rebase, so issued * NSEC never overflows */
			t0 += issued * NSEC / (uint64_t)c->rate;
			issued = 0;
		}
	}
}

static void run_dirty(void)
{
	struct dirty_cfg c;

	c.mode = param("ferry.mode", "mix");
	if (strcmp(c.mode, "random") && strcmp(c.mode, "same") && strcmp(c.mode, "mix") &&
	    strcmp(c.mode, "hot") && strcmp(c.mode, "idle")) {
		say("ferry-dirty: unknown ferry.mode=%s, using mix\n", c.mode);
		c.mode = "mix";
	}
	c.ws = parse_size(param("ferry.ws", "32M"));
	if (c.ws < PAGE_SIZE) {
		say("ferry-dirty: bad ferry.ws=%s, using 32M\n", param("ferry.ws", ""));
		c.ws = 32 << 20;
	}
	c.hot = parse_size(param("ferry.hot", "1M"));
	if (c.hot < PAGE_SIZE)
		c.hot = 1 << 20;
	c.rate = parse_long(param("ferry.rate", "5000"), 5000, 1, 1000000000L);

	/* random and same fix the share; mix and hot take ferry.same. */
	if (strcmp(c.mode, "random") == 0)
		c.same = 0;
	else if (strcmp(c.mode, "same") == 0)
		c.same = 100;
	else if (strcmp(c.mode, "hot") == 0)
		c.same = parse_long(param("ferry.same", "0"), 0, 0, 100);
	else
		c.same = parse_long(param("ferry.same", "70"), 70, 0, 100);

	/* Per-page shares (mix only) replace the per-write share. */
	c.samepages = -1;
	if (strcmp(c.mode, "mix") == 0 && param("ferry.samepages", NULL) != NULL)
		c.samepages = parse_long(param("ferry.samepages", "0"), 0, 0, 100);
	c.chg = parse_long(param("ferry.chg", "8"), 8, 1, PAGE_SIZE);

	say("ferry-dirty: mode=%s ws=%lluK rate=%ld/s same=%ld%% samepages=%ld%% chg=%ld hot=%lluK\n",
	    c.mode, (unsigned long long)(c.ws >> 10), c.rate, c.same, c.samepages, c.chg,
	    (unsigned long long)(c.hot >> 10));

	pid_t pid = fork();
	if (pid < 0) {
		say("ferry-dirty: fork: %s (counter only)\n", strerror(errno));
	} else if (pid == 0) {
		set_signal(SIGTERM, SIG_DFL);
		set_signal(SIGUSR1, SIG_DFL);
		set_signal(SIGUSR2, SIG_DFL);
		set_signal(SIGINT, SIG_DFL);
		set_signal(SIGCHLD, SIG_DFL);
		dirty_writer(&c);
		_exit(0);
	}
	counter_loop();
}

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
static void run_disk(void)
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

/* -------------------------------------------------------------- net ---- */

/* Runs busybox with argv and returns its exit status (-1: did not run). */
static int busybox(char *const argv[])
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		execv("/bin/busybox", argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * ferry.run=net: eth0 up with address ferry.ip (default 10.0.2.2/24),
 * "FERRY-NET up <addr>", then busybox ping of ferry.peer (default
 * 10.0.2.1) every ferry.interval seconds (default 0.2) for ever; its
 * "64 bytes from ... seq=N" lines are the output. A shell if ping ends.
 */
static void run_net(void)
{
	char *ip = (char *)param("ferry.ip", "10.0.2.2/24");
	char *peer = (char *)param("ferry.peer", "10.0.2.1");
	char *interval = (char *)param("ferry.interval", "0.2");
	int up = busybox((char *[]){ "ip", "link", "set", "eth0", "up", NULL });
	int addr = busybox((char *[]){ "ip", "addr", "add", ip, "dev", "eth0", NULL });

	if (up != 0 || addr != 0) {
		say("FERRY-NET error: ip link up %d, ip addr add %d\n", up, addr);
		run_shell();
	}
	say("FERRY-NET up %s\n", ip);
	int st = busybox((char *[]){ "ping", "-i", interval, peer, NULL });
	say("FERRY-NET ping exited with %d\n", st);
	run_shell();
}

/* ------------------------------------------------------------- main ---- */

int main(void)
{
	/*
	 * The kernel opened /dev/console of the initramfs as fds 0-2. If that
	 * failed (no node), mount devtmpfs first to get one.
	 */
	if (fcntl(1, F_GETFD) < 0) {
		mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
		attach_stdio("/dev/console", O_NOCTTY);
	}
	write_all(1, MARKER "\n", sizeof(MARKER));

	set_signal(SIGTERM, on_shutdown_signal);
	set_signal(SIGUSR1, on_shutdown_signal);
	set_signal(SIGUSR2, on_shutdown_signal);
	set_signal(SIGINT, on_shutdown_signal);
	set_signal(SIGCHLD, on_sigchld);

	try_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	try_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	try_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");

	/* The serial port itself if there is one, else the console. */
	if (access("/dev/ttyS0", F_OK) == 0)
		console_path = "/dev/ttyS0";
	if (attach_stdio(console_path, O_NOCTTY) < 0)
		say("ferry-init: open %s: %s (keeping the console)\n", console_path, strerror(errno));

	read_cmdline();
	const char *run = param("ferry.run", "");

	if (strcmp(run, "poweroff") == 0) {
		say("ferry-init: ferry.run=poweroff: restarting the machine\n");
		machine_restart();
	} else if (strcmp(run, "shell") == 0) {
		run_shell();
	} else if (strcmp(run, "counter") == 0) {
		counter_loop();
	} else if (strcmp(run, "dirty") == 0) {
		run_dirty();
	} else if (strcmp(run, "disk") == 0) {
		run_disk();
	} else if (strcmp(run, "net") == 0) {
		run_net();
	} else {
		if (*run)
			say("ferry-init: unknown ferry.run=%s; starting a shell\n", run);
		else
			say("ferry-init: no ferry.run= on the kernel command line; starting a shell\n");
		run_shell();
	}
	return 0;
}
