/* How KVM answered each aging request of the host's MMU notifier: the
 * kvm:kvm_age_notifier tracepoint of kernels with the test_clear_young
 * series (kernels/test-clear-young), fired once per request by all four
 * accessed-bit ops with the op, the path KVM took (lockless, lockless with
 * rmaps under mmu_lock, refused and why, or locked), the range and the
 * accessed pages found.
 *
 * Requests are filtered to the VM's memslot hva ranges and aggregated per
 * (op, path, task class): calls, pages asked (inside our memslots) and
 * young pages, and of those the ones cleared (requests with
 * MMU_NOTIFIER_YOUNG_CLEAR). Python reads the running totals at each pass
 * edge.
 *
 * With -DWITH_REQUEST_BEGIN, each request's latency too: from its start
 * (kvm_age_hva / kvm_test_age_hva for the locked ops, kvm_test_clear_young
 * for the lockless one) to kvm_age_notifier on the same thread, summed and
 * maxed per cell and binned in a log2 histogram per op.
 *
 * Options (-D): MAX_RANGES, MAX_AGER_TIDS, MAX_THREADS, WITH_REQUEST_BEGIN.
 * Enum values are mirrored in kvmctl/trace/records.py (a unit test checks).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define KVMCTL_HVA_FILTER
#define KVMCTL_TASK_CLASSES
#include "ranges.h"

#ifndef MAX_AGER_TIDS
#define MAX_AGER_TIDS 256
#endif
#ifndef MAX_THREADS
#define MAX_THREADS 4096
#endif
#define NR_SLOTS 64

enum age_op {
	OP_TEST_CLEAR_YOUNG = 0,
	OP_CLEAR_FLUSH_YOUNG = 1,
	OP_CLEAR_YOUNG = 2,
	OP_TEST_YOUNG = 3,
	NR_OPS = 4,
};

enum age_path {
	AGE_PATH_LOCKLESS = 0,
	AGE_PATH_LOCKLESS_RMAP = 1,
	AGE_PATH_REFUSED_NESTED = 2,
	AGE_PATH_REFUSED_MMU = 3,
	AGE_PATH_LOCKED = 4,
	NR_AGE_PATHS = 5,
};

enum notifier_lost {
	LOST_BAD_FIELD = 0,    /* op or path outside the known values: a newer kernel */
	LOST_BEGIN_FULL = 1,   /* a request's start not stored: map full (its latency is missing) */
	NR_NOTIFIER_LOST = 2,
};

#define YOUNG_CLEAR 1 /* MMU_NOTIFIER_YOUNG_CLEAR */

struct nstats {
	u64 calls;
	u64 pages;
	u64 young;
	u64 cleared;
	u64 timed;    /* requests whose start was seen */
	u64 total_ns; /* their summed latency */
	u64 max_ns;
};

BPF_ARRAY(config, u64, NR_CFG);
BPF_ARRAY(ranges, struct slot_range, MAX_RANGES);
BPF_HASH(ager_tids, u32, u8, MAX_AGER_TIDS);
BPF_ARRAY(stats, struct nstats, NR_OPS * NR_AGE_PATHS * NR_CLASSES);
BPF_ARRAY(lost, u64, NR_NOTIFIER_LOST);
BPF_HASH(begins, u32, u64, MAX_THREADS);
BPF_ARRAY(lat_hist, u64, NR_OPS * NR_SLOTS);

static __always_inline u64 cfg_get(int which)
{
	u64 *v = config.lookup(&which);
	return v ? *v : 0;
}

static __always_inline struct slot_range *range_lookup(int k)
{
	return ranges.lookup(&k);
}

static __always_inline bool ager_tid_known(u32 tid)
{
	return ager_tids.lookup(&tid) != 0;
}

static __always_inline void lost_inc(int which)
{
	u64 *v = lost.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, 1);
}

#ifdef WITH_REQUEST_BEGIN
static __always_inline int request_begin(void)
{
	u32 tid = bpf_get_current_pid_tgid();
	u64 now = bpf_ktime_get_ns();
	if (begins.update(&tid, &now))
		lost_inc(LOST_BEGIN_FULL);
	return 0;
}

TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	return request_begin();
}

TRACEPOINT_PROBE(kvm, kvm_test_age_hva)
{
	return request_begin();
}

TRACEPOINT_PROBE(kvm, kvm_test_clear_young)
{
	return request_begin();
}
#endif

/* Pages of [start, end) inside our memslots. */
static __always_inline u64 our_pages(u64 start, u64 end)
{
	u64 nr = cfg_get(CFG_NR_RANGES), pages = 0;
	for (int i = 0; i < MAX_RANGES; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		struct slot_range *r = range_lookup(i);
		if (!r)
			break;
		u64 first;
		pages += range_pages(r, start, end, &first);
	}
	return pages;
}

TRACEPOINT_PROBE(kvm, kvm_age_notifier)
{
	u64 now = bpf_ktime_get_ns(), lat = 0;
	bool timed = false;
#ifdef WITH_REQUEST_BEGIN
	u32 tid = bpf_get_current_pid_tgid();
	u64 *begin = begins.lookup(&tid);
	if (begin) {
		lat = now - *begin;
		timed = true;
		begins.delete(&tid);
	}
#endif
	if (now < cfg_get(CFG_START_NS) || now >= cfg_get(CFG_END_NS))
		return 0;
	u64 pages = our_pages(args->start, args->end);
	if (!pages)
		return 0;
	u32 op = args->op, path = args->path;
	if (op >= NR_OPS || path >= NR_AGE_PATHS) {
		lost_inc(LOST_BAD_FIELD);
		return 0;
	}

	u64 id = bpf_get_current_pid_tgid();
	char comm[TASK_COMM_LEN];
	bpf_get_current_comm(&comm, sizeof(comm));
	u32 cls = classify((u32)id, id >> 32, cfg_get(CFG_VM_TGID), comm);

	int slot = (op * NR_AGE_PATHS + path) * NR_CLASSES + cls;
	struct nstats *s = stats.lookup(&slot);
	if (s) {
		__sync_fetch_and_add(&s->calls, 1);
		__sync_fetch_and_add(&s->pages, pages);
		if (args->young > 0) {
			__sync_fetch_and_add(&s->young, (u64)args->young);
			if (args->flags & YOUNG_CLEAR)
				__sync_fetch_and_add(&s->cleared, (u64)args->young);
		}
		if (timed) {
			__sync_fetch_and_add(&s->timed, 1);
			__sync_fetch_and_add(&s->total_ns, lat);
			if (lat > s->max_ns)
				s->max_ns = lat; /* racy max, as in perf */
		}
	}
	if (timed) {
		u32 l2 = bpf_log2l(lat);
		if (l2 >= NR_SLOTS)
			l2 = NR_SLOTS - 1;
		int h = op * NR_SLOTS + l2;
		u64 *c = lat_hist.lookup(&h);
		if (c)
			__sync_fetch_and_add(c, 1);
	}
	return 0;
}
