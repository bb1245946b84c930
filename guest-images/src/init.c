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
 *             ferry.hot, ferry.chg; see README.md; dirty.c) after filling
 *             its working set (ferry.fill; fill.c): copy (default: one
 *             random page copied into every page, 8 words changed per
 *             page; a compressor with a window across pages shrinks it
 *             unrealistically) or mixed (for measuring compression: 40%
 *             text-like pages of log and JSON lines, 30% sparse pages,
 *             mostly zero with a few scattered words and structs, 30%
 *             random, incompressible pages; in 64 KiB extents)
 *   disk      write files on the ext2 disk /dev/vda and read them back
 *             (disk.c)
 *   diskread  counter lines, plus a child that reads the raw disk
 *             /dev/vda through the page cache in a loop (disk.c)
 *   net       eth0 up, ping the host (net.c)
 *   (other)   a message, then the shell
 *
 * Every line it prints goes out with a single write(), so lines from the
 * counter and the memory writer never mix. System calls are expensive in
 * the emulated guests this runs in: the hot loops avoid them.
 */
#include "guest.h"

#define MARKER "FERRY-GUEST-READY"

static char cmdline[4096];
static const char *console_path = "/dev/console";
uint64_t rng_state = 0x9e3779b97f4a7c15ULL;


/* ------------------------------------------------------------ output ---- */

void write_all(int fd, const char *buf, size_t len)
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
void say(const char *fmt, ...)
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
void machine_restart(void)
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

void set_signal(int sig, void (*handler)(int))
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = handler;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
}

/* A child of init takes the default actions init overrides. */
void child_signals(void)
{
	set_signal(SIGTERM, SIG_DFL);
	set_signal(SIGUSR1, SIG_DFL);
	set_signal(SIGUSR2, SIG_DFL);
	set_signal(SIGINT, SIG_DFL);
	set_signal(SIGCHLD, SIG_DFL);
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
const char *param(const char *name, const char *def)
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
uint64_t parse_size(const char *s)
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

long parse_long(const char *s, long def, long min, long max)
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
uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

void sleep_until(uint64_t t)
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

void run_shell(void)
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
			child_signals();
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
void counter_loop(void)
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
	} else if (strcmp(run, "diskread") == 0) {
		run_diskread();
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
