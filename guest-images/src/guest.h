/*
 * guest.h: what the parts of the ferry guest's /init share (init.c has
 * main and the basics; dirty.c, disk.c and net.c one workload each, fill.c
 * the memory writer's first contents).
 */
#ifndef FERRY_GUEST_H
#define FERRY_GUEST_H

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

#define PAGE_SIZE 4096UL
#define WORDS_PER_PAGE (PAGE_SIZE / sizeof(uint64_t))
#define NSEC 1000000000ULL

/* init.c */
void write_all(int fd, const char *buf, size_t len);
__attribute__((format(printf, 1, 2))) void say(const char *fmt, ...);
void machine_restart(void);
void set_signal(int sig, void (*handler)(int));
void child_signals(void);
const char *param(const char *name, const char *def);
uint64_t parse_size(const char *s);
long parse_long(const char *s, long def, long min, long max);
uint64_t now_ns(void);
void sleep_until(uint64_t t);
void run_shell(void);
void counter_loop(void);

extern uint64_t rng_state;

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

/* fill.c: the memory writer's first contents (ferry.fill) */
void fill_copy(uint64_t *mem, uint64_t pages);
void fill_mixed(uint64_t *mem, uint64_t pages, uint64_t count[3]);

/* The workloads: dirty.c, disk.c, net.c. */
void run_dirty(void);
void run_disk(void);
void run_diskread(void);
void run_net(void);

#endif
