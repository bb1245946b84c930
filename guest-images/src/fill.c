/*
 * The memory writer's first contents of its working set (ferry.fill=).
 *
 *   copy   (default) one random page, copied into every page with 8 words
 *          of its own (one per 512 bytes): cheap, every page different and
 *          non-zero. A compressor whose window spans pages finds each page
 *          almost whole in the one before, so it shrinks this fill far
 *          more than it would real memory: not for measuring compression.
 *   mixed  closer to real memory for measuring compression: the working
 *          set in extents of 16 pages (64 KiB), 40% text, 30% sparse and
 *          30% random extents, interleaved (extent k has kind (3k mod 10):
 *          0-3 text, 4-6 sparse, 7-9 random), every page generated on its
 *          own (no page is a copy of another):
 *            text    log and JSON lines: words of a small vocabulary,
 *                    varying lengths, fresh numbers on every line
 *                    (time stamps, ids, counts, hex), as in logs or caches
 *            sparse  zero but for 4-19 scattered non-zero items: 8-byte
 *                    words (pointers, counters) and 32-64-byte structs
 *            random  xorshift output: incompressible
 *
 * The guest runs user code at native speed here (the emulator is slow in
 * the kernel): the copy fill takes ~10 ms for 32 MiB, the mixed one a few
 * hundred ms; both print their time.
 */
#include "guest.h"

void fill_copy(uint64_t *mem, uint64_t pages)
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

/* ----------------------------------------------------------- text ---- */

static const char *const words[] = {
	"user", "session", "request", "response", "cache", "hit", "miss", "key",
	"value", "timeout", "retry", "connect", "accepted", "closed", "worker",
	"queue", "item", "order", "price", "total", "status", "error", "warning",
	"debug", "info", "get", "set", "delete", "update", "insert", "select",
	"from", "where", "alice", "bob", "carol", "dave", "eve", "mallory",
	"payment", "invoice", "customer", "product", "blue", "green", "red",
	"small", "large", "enabled", "disabled", "true", "false", "null", "ok",
	"latency", "bytes", "region", "eu-west", "us-east", "node", "shard",
	"replica", "leader", "follower",
};
#define NWORDS (sizeof(words) / sizeof(words[0]))

static const char *const levels[] = {"INFO", "DEBUG", "WARN", "ERROR", "INFO", "INFO"};

/* A line under construction (at most LINE_MAX_LEN bytes). */
#define LINE_MAX_LEN 256
struct line {
	char b[LINE_MAX_LEN];
	size_t n;
};

static void put(struct line *l, const char *s)
{
	size_t k = strlen(s);

	if (l->n + k > LINE_MAX_LEN)
		k = LINE_MAX_LEN - l->n;
	memcpy(l->b + l->n, s, k);
	l->n += k;
}

/* v in decimal, with leading zeros to at least width digits */
static void put_dec(struct line *l, uint64_t v, int width)
{
	char t[24];
	int i = sizeof(t);

	t[--i] = 0;
	do {
		t[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v || (int)sizeof(t) - 1 - i < width);
	put(l, t + i);
}

static void put_hex(struct line *l, uint64_t v, int digits)
{
	char t[17];

	for (int i = digits - 1; i >= 0; i--) {
		t[i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	}
	t[digits] = 0;
	put(l, t);
}

static const char *word(uint64_t r) { return words[r % NWORDS]; }

/* Milliseconds of a made-up clock that the lines advance. */
static uint64_t text_clock = 1764783892000ULL;

/* One log line: time stamp, level, component, 2-6 key=value fields. */
static void log_line(struct line *l)
{
	uint64_t r = rng();

	text_clock += r % 37;
	put_dec(l, text_clock / 1000, 0);
	put(l, ".");
	put_dec(l, text_clock % 1000, 3);
	put(l, " ");
	put(l, levels[(r >> 8) % 6]);
	put(l, " ");
	put(l, word(r >> 16));
	put(l, "-");
	put_dec(l, (r >> 24) % 16, 0);
	put(l, " id=");
	put_hex(l, rng(), 8 + (int)((r >> 30) % 9));
	for (uint64_t f = 2 + (r >> 40) % 5; f > 0; f--) {
		uint64_t q = rng();

		put(l, " ");
		put(l, word(q));
		put(l, "=");
		if (q & 0x100)
			put_dec(l, (q >> 12) % (1 + ((q >> 9) & 7) * 10000), 0);
		else
			put(l, word(q >> 20));
	}
	put(l, "\n");
}

/* One JSON object: 3-7 members, strings, numbers, a small array. */
static void json_line(struct line *l)
{
	uint64_t r = rng();

	text_clock += r % 37;
	put(l, "{\"ts\":");
	put_dec(l, text_clock, 0);
	put(l, ",\"");
	put(l, word(r >> 8));
	put(l, "\":\"");
	put(l, word(r >> 16));
	put(l, "\"");
	for (uint64_t f = 1 + (r >> 24) % 5; f > 0; f--) {
		uint64_t q = rng();

		put(l, ",\"");
		put(l, word(q));
		put(l, "\":");
		switch ((q >> 8) % 4) {
		case 0:
			put_dec(l, (q >> 12) % 100000, 0);
			break;
		case 1:
			put_dec(l, (q >> 12) % 1000, 0);
			put(l, ".");
			put_dec(l, (q >> 32) % 100, 2);
			break;
		case 2:
			put(l, "\"");
			put(l, word(q >> 20));
			put(l, "\"");
			break;
		default:
			put(l, "[\"");
			put(l, word(q >> 20));
			put(l, "\",\"");
			put(l, word(q >> 28));
			put(l, "\"]");
		}
	}
	put(l, "}\n");
}

/* Fill a page with lines; the last one is cut at the page's end. */
static void fill_text(unsigned char *pg)
{
	struct line l;
	size_t off = 0;

	while (off < PAGE_SIZE) {
		l.n = 0;
		if (rng() & 1)
			log_line(&l);
		else
			json_line(&l);
		size_t k = l.n < PAGE_SIZE - off ? l.n : PAGE_SIZE - off;
		memcpy(pg + off, l.b, k);
		off += k;
	}
}

/* ----------------------------------------------------- sparse, random ---- */

/* A zero page (as mapped) with 4-19 items at random word offsets. */
static void fill_sparse(uint64_t *pg)
{
	uint64_t r = rng();

	for (uint64_t n = 4 + r % 16; n > 0; n--) {
		uint64_t q = rng();
		uint64_t w = (q >> 8) % WORDS_PER_PAGE;

		if (q & 1) {
			/* a word: a pointer-like value or a small counter */
			pg[w] = (q & 2) ? 0x00007f0000000000ULL | ((q >> 16) & 0xfffffff8ULL)
					: 1 + (q >> 40) % 1000;
		} else {
			/* a struct of 4-8 words: id, flags, pointer, counters */
			uint64_t len = 4 + (q >> 20) % 5;

			if (w + len > WORDS_PER_PAGE)
				w = WORDS_PER_PAGE - len;
			pg[w] = 1 + (q >> 32) % 100000;
			pg[w + 1] = (q >> 24) & 0xff;
			pg[w + 2] = 0x00007f0000000000ULL | (rng() & 0xfffffff8ULL);
			for (uint64_t i = 3; i < len; i++)
				pg[w + i] = rng() % 4096;
		}
	}
}

static void fill_random(uint64_t *pg)
{
	for (uint64_t w = 0; w < WORDS_PER_PAGE; w++)
		pg[w] = rng();
}

#define EXTENT_PAGES 16

/* The kind of extent k: 0 text, 1 sparse, 2 random (40/30/30). */
static int extent_kind(uint64_t k)
{
	uint64_t c = k * 3 % 10;

	return c < 4 ? 0 : c < 7 ? 1 : 2;
}

void fill_mixed(uint64_t *mem, uint64_t pages, uint64_t count[3])
{
	count[0] = count[1] = count[2] = 0;
	for (uint64_t p = 0; p < pages; p++) {
		uint64_t *pg = mem + p * WORDS_PER_PAGE;
		int kind = extent_kind(p / EXTENT_PAGES);

		count[kind]++;
		if (kind == 0)
			fill_text((unsigned char *)pg);
		else if (kind == 1)
			fill_sparse(pg);
		else
			fill_random(pg);
	}
}
