/* Aging calls of KVM's mmu notifiers on the experiment VM's memory.
 *
 * kvm:kvm_age_hva (clear_young / clear_flush_young), kvm:kvm_test_age_hva
 * (test_young), kvm:kvm_unmap_hva_range (invalidate_range_start) and, with
 * -DWITH_AGE_NOTIFIER, the requests the test_clear_young hook answered
 * (kvm:kvm_age_notifier, op test_clear_young, a lockless path: these fire
 * no kvm_age_hva) are
 * filtered to the VM's memslot hva ranges, converted to guest frames and
 * aggregated here: calls and pages per (kind, task class), per-gfn counts,
 * a time series per BUCKET_NS and calls per (task, kind). Python copies the
 * maps out; nothing is streamed per event.
 *
 * The tracepoints carry no VM: an event names an address range of whichever
 * mm the notifier belongs to. When another KVM process maps an address of
 * our ranges too, an event there may be that process's, not our VM's.
 * Python writes those shared pieces into `others` (CFG_NR_OTHERS entries);
 * an event touching one is counted in `ambiguous` per kind, and nowhere
 * else, so the other views hold only events that can be ours alone.
 *
 * Options (-D): MAX_RANGES, NR_PAGES (per-gfn array length: the guest's
 * page count, capped), BUCKET_NS, NR_BUCKETS, MAX_TASKS,
 * MAX_PAGES_PER_EVENT (per-gfn loop bound; pages beyond it are counted as
 * LOST_GFN_CLIPPED, never silently dropped).
 *
 * Enum values are mirrored in kvmctl/trace/records.py (a unit test checks).
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define KVMCTL_TASK_CLASSES
#include "ranges.h"

#ifndef NR_PAGES
#define NR_PAGES 1
#endif
#ifndef BUCKET_NS
#define BUCKET_NS 100000000ULL
#endif
#ifndef NR_BUCKETS
#define NR_BUCKETS 600
#endif
#ifndef MAX_TASKS
#define MAX_TASKS 1024
#endif
#ifndef MAX_AGER_TIDS
#define MAX_AGER_TIDS 256
#endif
#ifndef MAX_PAGES_PER_EVENT
#define MAX_PAGES_PER_EVENT 512
#endif
#ifndef MAX_OTHERS
#define MAX_OTHERS 16
#endif

enum event_kind {
	KIND_AGE = 0,
	KIND_TEST_AGE = 1,
	KIND_UNMAP = 2,
	KIND_TEST_CLEAR_YOUNG = 3,
	NR_KINDS = 4,
};

enum aging_lost {
	LOST_TASKS_FULL = 0,      /* by_task map full: call counted in totals only */
	LOST_BUCKET_OVERFLOW = 1, /* event after NR_BUCKETS * BUCKET_NS */
	LOST_GFN_CLIPPED = 2,     /* pages past MAX_PAGES_PER_EVENT in one event */
	LOST_GFN_INDEX = 3,       /* gfn index past NR_PAGES (array capped) */
	NR_AGING_LOST = 4,
};

struct counter {
	u64 calls;
	u64 pages;
};

struct hva_span {
	u64 start;
	u64 end;
};

struct task_key {
	u32 pid;
	u32 tgid;
	u32 kind;
	char comm[TASK_COMM_LEN];
};

BPF_ARRAY(config, u64, NR_CFG);
BPF_ARRAY(ranges, struct slot_range, MAX_RANGES);
BPF_HASH(ager_tids, u32, u8, MAX_AGER_TIDS);
BPF_ARRAY(totals, struct counter, NR_KINDS * NR_CLASSES);
/* mmap()ed by Python: copying millions of entries one syscall each is too
 * slow. u64 values: array elements are 8-byte aligned anyway. */
BPF_F_TABLE("array", u32, struct counter, series, NR_BUCKETS * NR_KINDS * NR_CLASSES, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u64, per_gfn, NR_KINDS * NR_PAGES, BPF_F_MMAPABLE);
BPF_HASH(by_task, struct task_key, struct counter, MAX_TASKS);
BPF_ARRAY(lost, u64, NR_AGING_LOST);
BPF_ARRAY(others, struct hva_span, MAX_OTHERS);
BPF_ARRAY(ambiguous, struct counter, NR_KINDS);

static __always_inline u64 cfg_get(int which)
{
	u64 *v = config.lookup(&which);
	return v ? *v : 0;
}

static __always_inline void lost_inc(int which, u64 n)
{
	u64 *v = lost.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, n);
}

static __always_inline void counter_add(struct counter *c, u64 pages)
{
	__sync_fetch_and_add(&c->calls, 1);
	__sync_fetch_and_add(&c->pages, pages);
}

static __always_inline bool ager_tid_known(u32 tid)
{
	return ager_tids.lookup(&tid) != 0;
}

static __always_inline void count_gfns(u32 kind, u64 index, u64 n)
{
	u64 room = index < NR_PAGES ? NR_PAGES - index : 0;
	if (n > room) {
		lost_inc(LOST_GFN_INDEX, n - room);
		n = room;
	}
	if (n > MAX_PAGES_PER_EVENT) {
		lost_inc(LOST_GFN_CLIPPED, n - MAX_PAGES_PER_EVENT);
		n = MAX_PAGES_PER_EVENT;
	}
	u32 base = kind * NR_PAGES + index;
	for (u32 i = 0; i < MAX_PAGES_PER_EVENT; i++) {
		bounded_loop_var(i);
		if (i >= n)
			break;
		u32 idx = base + i;
		u64 *v = per_gfn.lookup(&idx);
		if (v)
			__sync_fetch_and_add(v, 1);
	}
}

/* Count the pages of [start, end) inside our memslots; 0 = not our VM.
 * The per-gfn loop runs once, after the range loop, for the first memslot
 * the event touches: nested inside the range loop it is too complex for
 * the 6.1 verifier ("sequence of 8193 jumps"). An event spanning two
 * memslots (adjacent mappings) counts the second one's pages as
 * LOST_GFN_CLIPPED in the per-gfn view; totals count every page. */
static __always_inline u64 our_pages(u32 kind, u64 start, u64 end)
{
	u64 nr = cfg_get(CFG_NR_RANGES);
	u64 pages = 0, gfn_first = 0, gfn_pages = 0;
	for (int i = 0; i < MAX_RANGES; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		int k = i;
		struct slot_range *r = ranges.lookup(&k);
		if (!r)
			break;
		u64 first, n = range_pages(r, start, end, &first);
		if (!n)
			continue;
		if (!gfn_pages) {
			gfn_first = r->index_base + first;
			gfn_pages = n;
		} else {
			lost_inc(LOST_GFN_CLIPPED, n);
		}
		pages += n;
	}
	if (gfn_pages)
		count_gfns(kind, gfn_first, gfn_pages);
	return pages;
}

/* Whether [start, end) touches an address another KVM process maps too. */
static __always_inline bool shared_with_other_vm(u64 start, u64 end)
{
	u64 nr = cfg_get(CFG_NR_OTHERS);
	for (int i = 0; i < MAX_OTHERS; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		int k = i;
		struct hva_span *o = others.lookup(&k);
		if (!o)
			break;
		if (start < o->end && end > o->start)
			return true;
	}
	return false;
}

static __always_inline int on_range(u32 kind, u64 start, u64 end)
{
	u64 now = bpf_ktime_get_ns(), t0 = cfg_get(CFG_START_NS);
	if (now < t0 || now >= cfg_get(CFG_END_NS))
		return 0;
	if (shared_with_other_vm(start, end)) {
		int k = kind;
		struct counter *a = ambiguous.lookup(&k);
		if (a)
			counter_add(a, (end - start + KVMCTL_PAGE_SIZE - 1) >> KVMCTL_PAGE_SHIFT);
		return 0;
	}
	u64 pages = our_pages(kind, start, end);
	if (!pages)
		return 0;

	u64 id = bpf_get_current_pid_tgid();
	u32 tid = (u32)id, tgid = id >> 32;
	struct task_key tk = {.pid = tid, .tgid = tgid, .kind = kind};
	bpf_get_current_comm(&tk.comm, sizeof(tk.comm));
	u32 cls = classify(tid, tgid, cfg_get(CFG_VM_TGID), tk.comm);

	int slot = kind * NR_CLASSES + cls;
	struct counter *c = totals.lookup(&slot);
	if (c)
		counter_add(c, pages);

	u64 bucket = (now - t0) / BUCKET_NS;
	if (bucket < NR_BUCKETS) {
		int b = (bucket * NR_KINDS + kind) * NR_CLASSES + cls;
		c = series.lookup(&b);
		if (c)
			counter_add(c, pages);
	} else {
		lost_inc(LOST_BUCKET_OVERFLOW, 1);
	}

	struct counter zero = {};
	c = by_task.lookup_or_try_init(&tk, &zero);
	if (c)
		counter_add(c, pages);
	else
		lost_inc(LOST_TASKS_FULL, 1);
	return 0;
}

TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	return on_range(KIND_AGE, args->start, args->end);
}

TRACEPOINT_PROBE(kvm, kvm_test_age_hva)
{
	return on_range(KIND_TEST_AGE, args->hva, args->hva + 1);
}

TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range)
{
	return on_range(KIND_UNMAP, args->start, args->end);
}

#ifdef WITH_AGE_NOTIFIER
/* op 0 = test_clear_young; paths 0 and 1 = answered by the hook (notifier.c) */
TRACEPOINT_PROBE(kvm, kvm_age_notifier)
{
	if (args->op != 0 || args->path > 1)
		return 0;
	return on_range(KIND_TEST_CLEAR_YOUNG, args->start, args->end);
}
#endif
