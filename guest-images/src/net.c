/* ferry.run=net: a guest on a virtio-net device. */
#include "guest.h"

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
void run_net(void)
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

