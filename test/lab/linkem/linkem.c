/*
 * linkem: a user-space link emulator for the NAT lab (test/lab/link-emulator.ts).
 *
 *   router `wan` ⇄ veth ⇄ [ a   linkem   b ] ⇄ veth ⇄ `wN` inet
 *                        (its own namespace, no addresses)
 *
 * Every Ethernet frame that arrives on one interface is sent out of the other after its
 * delay: a transparent two-port bridge (no TTL change, ARP crosses too) that holds each
 * frame. This kernel has no netem qdisc; AF_PACKET works, so this is the netem we have.
 *
 * Per direction, each frame is
 *   - lost with probability `loss` (independent draws),
 *   - otherwise released at  now + delay + U(-jitter, +jitter), never before the frame
 *     released before it (jitter without reordering, like a real path's queues),
 *   - or, with probability `reorder`, put on a second queue released at
 *     now + delay + REORDER_EXTRA: the frames that arrive meanwhile overtake it.
 * A direction holds at most `queue` frames (tail drop beyond, counted as `overflow`).
 *
 * Control on stdin, one line each (the harness writes them):
 *   set DELAY_US JITTER_US LOSS_PPM REORDER_PPM   both directions
 *   stats                                         prints one JSON line on stdout
 * End of stdin (the harness died) ends the program, so a lost parent never leaves it
 * behind. Prints "ready" once both sockets are bound.
 *
 * Frames must be wire-sized: the harness turns checksum and segmentation offloads off
 * on the interfaces that transmit into this namespace (ethtool -K … tx off gso off), as
 * a frame read here carries no offload metadata for the kernel to finish later.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

/* A reordered frame waits this much past its delay: long enough to be overtaken by the
 * frames of a busy flow (one every ~15 µs at 100 MB/s), short next to any RTO. */
#define REORDER_EXTRA_NS 2000000LL
/* Default bound on frames held per direction: 100 MB/s for 150 ms is ~10,000 frames. */
#define DEFAULT_QUEUE 16384
/* Frames read per readiness event before releasing due ones, so a flood in one
 * direction cannot starve the other's timing. */
#define READ_BATCH 64
#define SEND_BATCH 64
/* Frames are wire-sized (offloads off); room for jumbo frames all the same. */
#define FRAME_MAX 9216
#define SOCKET_BUF (16 << 20)

struct frame {
	int64_t due;
	uint32_t len;
	unsigned char *data;
};

/* A FIFO of frames whose due times never decrease. */
struct fifo {
	struct frame *v;
	uint32_t cap, head, n;
};

struct dir {
	const char *name;
	int in, out; /* sockets: read from `in`, send on `out` */
	struct fifo q, late;
	int64_t last_due;
	uint64_t rx, tx, lost, reordered, overflow, send_errors;
};

static int64_t delay_ns, jitter_ns;
static uint32_t loss_ppm, reorder_ppm, queue_cap = DEFAULT_QUEUE;
static uint64_t rng;

static int64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* xorshift64*: fast, and good enough for loss and jitter draws. */
static uint64_t rnd(void) {
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ULL;
}

static uint32_t rnd_ppm(void) { return (uint32_t)((rnd() >> 11) % 1000000); }

static void die(const char *what) {
	fprintf(stderr, "linkem: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int fifo_push(struct fifo *f, struct frame fr) {
	if (f->n == f->cap) return -1;
	f->v[(f->head + f->n) % f->cap] = fr;
	f->n++;
	return 0;
}

static struct frame *fifo_peek(struct fifo *f) { return f->n ? &f->v[f->head] : NULL; }

static void fifo_pop(struct fifo *f) {
	f->head = (f->head + 1) % f->cap;
	f->n--;
}

static int open_port(const char *ifname) {
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(ETH_P_ALL));
	if (s < 0) die("socket");
	unsigned idx = if_nametoindex(ifname);
	if (!idx) die(ifname);
	int one = 1, buf = SOCKET_BUF;
	/* Our own sends show up as PACKET_OUTGOING on the other socket: never read them back. */
	if (setsockopt(s, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) die("PACKET_IGNORE_OUTGOING");
	setsockopt(s, SOL_SOCKET, SO_RCVBUFFORCE, &buf, sizeof buf);
	setsockopt(s, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof buf);
	struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = (int)idx};
	if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) die("bind");
	struct packet_mreq mr = {.mr_ifindex = (int)idx, .mr_type = PACKET_MR_PROMISC};
	if (setsockopt(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) die("promisc");
	return s;
}

static void dir_init(struct dir *d, const char *name, int in, int out) {
	memset(d, 0, sizeof *d);
	d->name = name;
	d->in = in;
	d->out = out;
	d->q.cap = d->late.cap = queue_cap;
	d->q.v = calloc(queue_cap, sizeof(struct frame));
	d->late.v = calloc(queue_cap, sizeof(struct frame));
	if (!d->q.v || !d->late.v) die("calloc");
}

/* Reads what is waiting on d->in (up to READ_BATCH frames, one recvmmsg) and queues or drops each. */
static void dir_read(struct dir *d) {
	static unsigned char bufs[READ_BATCH][FRAME_MAX];
	static struct mmsghdr msgs[READ_BATCH];
	static struct iovec iov[READ_BATCH];
	static struct sockaddr_ll from[READ_BATCH];
	for (int i = 0; i < READ_BATCH; i++) {
		iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = FRAME_MAX};
		msgs[i].msg_hdr = (struct msghdr){.msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1};
	}
	int got = recvmmsg(d->in, msgs, READ_BATCH, MSG_DONTWAIT, NULL);
	if (got < 0) {
		if (errno == EAGAIN || errno == EINTR) return;
		die("recvmmsg");
	}
	int64_t now = now_ns();
	for (int i = 0; i < got; i++) {
		uint32_t len = msgs[i].msg_len;
		if (from[i].sll_pkttype == PACKET_OUTGOING) continue;
		d->rx++;
		if (loss_ppm && rnd_ppm() < loss_ppm) {
			d->lost++;
			continue;
		}
		struct frame fr = {.len = len};
		struct fifo *target = &d->q;
		if (reorder_ppm && rnd_ppm() < reorder_ppm) {
			fr.due = now + delay_ns + REORDER_EXTRA_NS;
			target = &d->late;
			d->reordered++;
		} else {
			int64_t j = jitter_ns ? (int64_t)(rnd() % (uint64_t)(2 * jitter_ns + 1)) - jitter_ns : 0;
			fr.due = now + delay_ns + j;
			if (fr.due < d->last_due) fr.due = d->last_due;
			d->last_due = fr.due;
		}
		fr.data = malloc(len);
		if (!fr.data) die("malloc");
		memcpy(fr.data, bufs[i], len);
		if (fifo_push(target, fr) < 0) {
			free(fr.data);
			d->overflow++;
		}
	}
}

/* Sends every frame that is due (batches of one sendmmsg); returns the next due time (or INT64_MAX). */
static int64_t dir_release(struct dir *d, int64_t now) {
	static struct mmsghdr msgs[SEND_BATCH];
	static struct iovec iov[SEND_BATCH];
	static unsigned char *sent[SEND_BATCH];
	for (;;) {
		int n = 0;
		int64_t next = INT64_MAX;
		while (n < SEND_BATCH) {
			struct frame *a = fifo_peek(&d->q), *b = fifo_peek(&d->late);
			struct fifo *from = a && (!b || a->due <= b->due) ? &d->q : b ? &d->late : NULL;
			if (!from) break;
			struct frame *fr = fifo_peek(from);
			if (fr->due > now) {
				next = fr->due;
				break;
			}
			iov[n] = (struct iovec){.iov_base = fr->data, .iov_len = fr->len};
			msgs[n].msg_hdr = (struct msghdr){.msg_iov = &iov[n], .msg_iovlen = 1};
			sent[n++] = fr->data;
			fifo_pop(from);
		}
		int done = 0;
		while (done < n) {
			int r = sendmmsg(d->out, msgs + done, (unsigned)(n - done), 0);
			if (r <= 0) {
				d->send_errors++; /* this frame is lost, like a full NIC queue */
				done++;
			} else {
				d->tx += (uint64_t)r;
				done += r;
			}
		}
		for (int i = 0; i < n; i++) free(sent[i]);
		if (n < SEND_BATCH) return next;
	}
}

static void print_stats(struct dir *ds) {
	printf("{");
	for (int i = 0; i < 2; i++) {
		struct dir *d = &ds[i];
		printf("%s\"%s\":{\"rx\":%llu,\"tx\":%llu,\"lost\":%llu,\"reordered\":%llu,\"overflow\":%llu,\"sendErrors\":%llu,\"queued\":%u}", i ? "," : "", d->name,
		       (unsigned long long)d->rx, (unsigned long long)d->tx, (unsigned long long)d->lost, (unsigned long long)d->reordered,
		       (unsigned long long)d->overflow, (unsigned long long)d->send_errors, d->q.n + d->late.n);
	}
	printf("}\n");
	fflush(stdout);
}

/* Handles complete control lines in `line`; returns 0 on end of input. */
static int read_control(struct dir *ds) {
	static char line[512];
	static size_t used;
	ssize_t n = read(0, line + used, sizeof line - 1 - used);
	if (n == 0) return 0;
	if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
	used += (size_t)n;
	line[used] = 0;
	char *start = line, *nl;
	while ((nl = strchr(start, '\n'))) {
		*nl = 0;
		long long d, j;
		unsigned l, r;
		if (sscanf(start, "set %lld %lld %u %u", &d, &j, &l, &r) == 4) {
			delay_ns = d * 1000;
			jitter_ns = j > d ? d * 1000 : j * 1000; /* a frame is never due before it came */
			loss_ppm = l;
			reorder_ppm = r;
			ds[0].last_due = ds[1].last_due = 0;
		} else if (strncmp(start, "stats", 5) == 0) {
			print_stats(ds);
		} else if (*start) {
			fprintf(stderr, "linkem: bad control line: %s\n", start);
		}
		start = nl + 1;
	}
	used = strlen(start);
	memmove(line, start, used);
	if (used >= sizeof line - 1) used = 0; /* an overlong line is dropped */
	return 1;
}

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: linkem IFACE_A IFACE_B [QUEUE_FRAMES]   (control lines on stdin)\n");
		return 2;
	}
	if (argc > 3) queue_cap = (uint32_t)strtoul(argv[3], NULL, 10);
	if (queue_cap < 16) queue_cap = 16;
	signal(SIGPIPE, SIG_IGN);
	rng = (uint64_t)now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ULL;
	int a = open_port(argv[1]), b = open_port(argv[2]);
	struct dir ds[2];
	dir_init(&ds[0], "up", a, b);   /* a → b: from the site towards the internet */
	dir_init(&ds[1], "down", b, a); /* b → a */
	printf("ready\n");
	fflush(stdout);
	struct pollfd pfd[3] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
	for (;;) {
		int64_t now = now_ns();
		int64_t next = dir_release(&ds[0], now), n2 = dir_release(&ds[1], now);
		if (n2 < next) next = n2;
		struct timespec ts, *tp = NULL;
		if (next != INT64_MAX) {
			int64_t wait = next - now_ns();
			if (wait < 0) wait = 0;
			ts.tv_sec = wait / 1000000000LL;
			ts.tv_nsec = wait % 1000000000LL;
			tp = &ts;
		}
		if (ppoll(pfd, 3, tp, NULL) < 0) {
			if (errno == EINTR) continue;
			die("ppoll");
		}
		if (pfd[2].revents & (POLLIN | POLLHUP | POLLERR))
			if (!read_control(ds)) return 0;
		if (pfd[0].revents & POLLIN) dir_read(&ds[0]);
		if (pfd[1].revents & POLLIN) dir_read(&ds[1]);
	}
}
