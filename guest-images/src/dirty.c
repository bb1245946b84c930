/* ferry.run=dirty: the memory writer of the migration tests and benchmarks. */
#include "guest.h"

/* ------------------------------------------------------------ dirty ---- */


struct dirty_cfg {
	const char *mode;
	uint64_t ws;		/* working set, bytes */
	uint64_t hot;		/* hot set (mode hot), bytes */
	long rate;		/* page writes per second */
	long same;		/* percent of writes that store the value already there */
	long samepages;		/* percent of pages only ever rewritten unchanged; -1: off */
	long chg;		/* bytes a changing write alters */
	const char *fill;	/* first contents: copy or mixed (fill.c) */
	int verify;		/* idle: check the working set before each report */
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

static void dirty_report(const struct dirty_cfg *c, uint64_t writes, uint64_t same,
			 uint64_t elapsed_ns)
{
	uint64_t actual = elapsed_ns ? writes * NSEC / elapsed_ns : 0;
	uint64_t pct = writes ? (same * 100 + writes / 2) / writes : 0;

	say("FERRY-DIRTY mode=%s ws=%llu target=%ld/s actual=%llu/s same=%llu%%\n",
	    c->mode, (unsigned long long)(c->ws >> 20), c->rate,
	    (unsigned long long)actual, (unsigned long long)pct);
}

/*
 * ferry.verify=1 (mode idle): the writer keeps a checksum of every page of
 * the working set (FNV-1a over its 64-bit words) taken after the fill, and
 * before each report checks every page against it, so that a migration
 * that lost or garbled a page shows in the destination's next report:
 *
 *   FERRY-DIRTY mode=idle ... same=0% verify=ok pages=N ms=T
 *   FERRY-DIRTY mode=idle ... same=0% verify=BAD pages=N bad=K first=P ms=T
 *
 * (K pages differ, the first at page P of the working set; T: the check's
 * time). User code runs at native speed here, so this is cheap.
 */
static uint64_t page_sum(const uint64_t *pg)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++)
		h = (h ^ pg[w]) * 0x100000001b3ULL;
	return h;
}

static uint64_t *verify_sums(const uint64_t *mem, uint64_t pages)
{
	uint64_t *sums = mmap(NULL, pages * sizeof(uint64_t), PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

	if (sums == MAP_FAILED) {
		say("ferry-dirty: mmap the verify sums: %s\n", strerror(errno));
		_exit(1);
	}
	for (uint64_t p = 0; p < pages; p++)
		sums[p] = page_sum(mem + p * WORDS_PER_PAGE);
	return sums;
}

static void verify_report(const struct dirty_cfg *c, const uint64_t *mem, const uint64_t *sums,
			  uint64_t pages)
{
	uint64_t t0 = now_ns(), bad = 0, first = 0;

	for (uint64_t p = 0; p < pages; p++) {
		if (page_sum(mem + p * WORDS_PER_PAGE) != sums[p]) {
			if (bad++ == 0)
				first = p;
		}
	}
	uint64_t ms = (now_ns() - t0) / 1000000;

	if (bad == 0)
		say("FERRY-DIRTY mode=%s ws=%llu target=%ld/s actual=0/s same=0%% verify=ok pages=%llu ms=%llu\n",
		    c->mode, (unsigned long long)(c->ws >> 20), c->rate, (unsigned long long)pages,
		    (unsigned long long)ms);
	else
		say("FERRY-DIRTY mode=%s ws=%llu target=%ld/s actual=0/s same=0%% verify=BAD pages=%llu bad=%llu first=%llu ms=%llu\n",
		    c->mode, (unsigned long long)(c->ws >> 20), c->rate, (unsigned long long)pages,
		    (unsigned long long)bad, (unsigned long long)first, (unsigned long long)ms);
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
	if (strcmp(c->fill, "mixed") == 0) {
		uint64_t n[3];

		fill_mixed(mem, pages, n);
		say("ferry-dirty: %llu pages mapped in %llu ms, filled (mixed: %llu text, %llu sparse, %llu random) in %llu ms\n",
		    (unsigned long long)pages, (unsigned long long)((t_mapped - t_fill) / 1000000),
		    (unsigned long long)n[0], (unsigned long long)n[1], (unsigned long long)n[2],
		    (unsigned long long)((now_ns() - t_mapped) / 1000000));
	} else {
		fill_copy(mem, pages);
		say("ferry-dirty: %llu pages mapped in %llu ms, filled in %llu ms\n",
		    (unsigned long long)pages, (unsigned long long)((t_mapped - t_fill) / 1000000),
		    (unsigned long long)((now_ns() - t_mapped) / 1000000));
	}

	if (strcmp(c->mode, "idle") == 0) {
		uint64_t *sums = c->verify ? verify_sums(mem, pages) : NULL;

		for (;;) {
			if (sums)
				verify_report(c, mem, sums, pages);
			else
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

	/*
	 * rewrite: every write replaces a whole page with new data: a page
	 * taken at a random 8-byte offset from a pool of random bytes, with
	 * its first word made unique. Neither a delta nor a compressor (no
	 * page repeats another) can shrink it: only throttling or post-copy
	 * let such a guest migrate over a link slower than its writes.
	 */
	uint64_t *pool = NULL;
	const uint64_t pool_words = (4ULL << 20) / 8;
	if (strcmp(c->mode, "rewrite") == 0) {
		pool = mmap(NULL, pool_words * 8, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		if (pool == MAP_FAILED) {
			say("ferry-dirty: mmap the rewrite pool: %s\n", strerror(errno));
			_exit(1);
		}
		for (uint64_t w = 0; w < pool_words; w++)
			pool[w] = rng();
	}

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

			if (pool) {
				uint64_t from = (r >> 9) % (pool_words - WORDS_PER_PAGE);

				memcpy(mem + p * WORDS_PER_PAGE, pool + from, PAGE_SIZE);
				mem[p * WORDS_PER_PAGE] = r;
			} else if (same) {
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

void run_dirty(void)
{
	struct dirty_cfg c;

	c.mode = param("ferry.mode", "mix");
	if (strcmp(c.mode, "random") && strcmp(c.mode, "same") && strcmp(c.mode, "mix") &&
	    strcmp(c.mode, "hot") && strcmp(c.mode, "idle") && strcmp(c.mode, "rewrite")) {
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

	/* random, rewrite and same fix the share; mix and hot take ferry.same. */
	if (strcmp(c.mode, "random") == 0 || strcmp(c.mode, "rewrite") == 0)
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
	c.fill = param("ferry.fill", "copy");
	if (strcmp(c.fill, "copy") && strcmp(c.fill, "mixed")) {
		say("ferry-dirty: unknown ferry.fill=%s, using copy\n", c.fill);
		c.fill = "copy";
	}

	c.verify = strcmp(c.mode, "idle") == 0 && parse_long(param("ferry.verify", "0"), 0, 0, 1);

	say("ferry-dirty: mode=%s ws=%lluK rate=%ld/s same=%ld%% samepages=%ld%% chg=%ld hot=%lluK fill=%s verify=%d\n",
	    c.mode, (unsigned long long)(c.ws >> 10), c.rate, c.same, c.samepages, c.chg,
	    (unsigned long long)(c.hot >> 10), c.fill, c.verify);

	pid_t pid = fork();
	if (pid < 0) {
		say("ferry-dirty: fork: %s (counter only)\n", strerror(errno));
	} else if (pid == 0) {
		child_signals();
		dirty_writer(&c);
		_exit(0);
	}
	counter_loop();
}

