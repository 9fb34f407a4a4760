/* Lock contention in the shape of `perf lock contention`.
 *
 * lock:contention_begin stores (timestamp, kernel stack id, flags) per
 * (thread, lock address); lock:contention_end adds the wait to a
 * {stack id, waiter class, lock address} key with total/max/count and to a
 * log2 wait histogram per waiter class. Python symbolizes the stacks and
 * recognizes mmu_lock waits by their KVM MMU frames. Keying the pending
 * waits by lock as well as thread pairs nested waits correctly: a sleeping
 * lock's slow path may itself spin on the lock's internal wait_lock.
 *
 * Waiter classes: this VM's threads (tgid == CFG_VM_TGID: its vCPUs), agers
 * (our ager tids, kswapd, kdamond), other.
 *
 * Kernel stacks are taken for this VM's threads and the agers only, unless
 * -DOTHER_STACKS: system-wide, other tasks bring thousands of distinct
 * stacks whose hash collisions would cost us stacks that matter. Waits of
 * other tasks are still counted per lock (stack id NO_STACK), so those on
 * our VM's mmu_lock are found by its address.
 *
 * With -DAGING_SECTIONS (kernels whose kvm:kvm_age_notifier marks the end of
 * every aging request), each wait also records whether a locked aging
 * request on our hva ranges was in progress at any time during it: begun by
 * kvm_age_hva / kvm_test_age_hva (fired before the locked op takes mmu_lock)
 * and not yet ended by kvm_age_notifier. Such waits add to behind_ns.
 *
 * Options (-D): MAX_THREADS, MAX_ENTRIES, MAX_STACKS, STACK_DEPTH, MAX_AGER_TIDS,
 * OTHER_STACKS, AGING_SECTIONS.
 * Enum values are mirrored in kvmctl/trace/records.py.
 */
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#ifdef AGING_SECTIONS
#define KVMCTL_HVA_FILTER
#endif
#include "ranges.h"

#ifndef MAX_THREADS
#define MAX_THREADS 16384
#endif
#ifndef MAX_ENTRIES
#define MAX_ENTRIES 16384
#endif
#ifndef MAX_STACKS
#define MAX_STACKS 32768
#endif
#ifndef STACK_DEPTH
#define STACK_DEPTH 32
#endif
#ifndef MAX_AGER_TIDS
#define MAX_AGER_TIDS 256
#endif
#define NR_SLOTS 64
#define NO_STACK (-1000) /* stack not collected (other waiters); failures are -errno */

enum waiter_class {
	WAITER_VM = 0,
	WAITER_AGER = 1,
	WAITER_OTHER = 2,
	NR_WAITERS = 3,
};

enum locks_lost {
	LOST_THREADS_FULL = 0,   /* begin not stored: pending-wait map full */
	LOST_NO_BEGIN = 1,       /* end in the window without a stored begin */
	LOST_STACK = 2,          /* wait counted without its stack: -EEXIST (hash bucket taken)
				    or -EFAULT (no callchain buffer: nested in another
				    perf/BPF callchain on this CPU) */
	LOST_ENTRIES_FULL = 3,   /* contention key not stored: map full */
	NR_LOCKS_LOST = 4,
};

/* A wait is the waiter's thread and the lock; every CPU's idle task is tid
 * 0, and an interrupt that contends while a CPU idles runs as it, so those
 * waits are told apart by their CPU (a spinning wait does not migrate). */
struct start_key {
	u32 tid;
	u32 idle_cpu;	/* CPU + 1 for tid 0, else 0 */
	u64 lock;
};

static __always_inline struct start_key start_key_of(u64 lock)
{
	struct start_key sk = {.tid = bpf_get_current_pid_tgid(), .lock = lock};
	if (!sk.tid)
		sk.idle_cpu = bpf_get_smp_processor_id() + 1;
	return sk;
}

struct tstamp {
	u64 ts;
	u64 sections_ended; /* aging sections ended before the wait began */
	s32 stack_id;
	u32 flags;
	u32 waiter;
	u32 aging; /* an aging section was in progress when the wait began */
};

struct contention_key {
	s32 stack_id;
	u32 waiter;
	u64 lock;
};

struct contention_val {
	u64 total_ns;
	u64 max_ns;
	u64 count;
	u64 behind_ns; /* the part of total_ns spent while aging held or wanted mmu_lock */
	u32 flags;
	u32 pad;
};

enum aging_state {
	AGING_ACTIVE = 0, /* locked aging requests on our ranges in progress */
	AGING_ENDED = 1,  /* and how many have ended */
	NR_AGING_STATE = 2,
};

BPF_ARRAY(config, u64, NR_CFG);
BPF_HASH(ager_tids, u32, u8, MAX_AGER_TIDS);
BPF_HASH(starts, struct start_key, struct tstamp, MAX_THREADS);
BPF_HASH(contended, struct contention_key, struct contention_val, MAX_ENTRIES);
/* Stack ids are hashes: a bucket taken by another stack fails with -EEXIST
 * (LOST_STACK). Many buckets of short stacks keep that rare for the same
 * memory as BPF_STACK_TRACE's 127 frames; the caller is within the first few
 * frames anyway. */
struct short_stack {
	u64 ip[STACK_DEPTH];
};
BPF_TABLE("stacktrace", int, struct short_stack, stacks, MAX_STACKS);
BPF_ARRAY(wait_hist, u64, NR_WAITERS * NR_SLOTS);
BPF_ARRAY(lost, u64, NR_LOCKS_LOST);
BPF_ARRAY(aging_state, u64, NR_AGING_STATE);
#ifdef AGING_SECTIONS
BPF_ARRAY(ranges, struct slot_range, MAX_RANGES);
BPF_HASH(in_section, u32, u8, MAX_THREADS);
#endif

static __always_inline u64 cfg_get(int which)
{
	u64 *v = config.lookup(&which);
	return v ? *v : 0;
}

static __always_inline void lost_inc(int which)
{
	u64 *v = lost.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline u64 aging_get(int which)
{
	u64 *v = aging_state.lookup(&which);
	return v ? *v : 0;
}

#ifdef AGING_SECTIONS
static __always_inline struct slot_range *range_lookup(int k)
{
	return ranges.lookup(&k);
}

static __always_inline void aging_add(int which, s64 delta)
{
	u64 *v = aging_state.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, delta);
}

static __always_inline int section_begin(u64 start, u64 end)
{
	u32 tid = bpf_get_current_pid_tgid();
	u8 one = 1;
	if (!hva_overlaps(start, end) || in_section.lookup(&tid))
		return 0;
	if (!in_section.update(&tid, &one))
		aging_add(AGING_ACTIVE, 1);
	return 0;
}

TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	return section_begin(args->start, args->end);
}

TRACEPOINT_PROBE(kvm, kvm_test_age_hva)
{
	return section_begin(args->hva, args->hva + 1);
}

/* Every request ends with this event; only locked ones began a section. */
TRACEPOINT_PROBE(kvm, kvm_age_notifier)
{
	u32 tid = bpf_get_current_pid_tgid();
	if (!in_section.lookup(&tid))
		return 0;
	in_section.delete(&tid);
	aging_add(AGING_ACTIVE, -1);
	aging_add(AGING_ENDED, 1);
	return 0;
}
#endif

static __always_inline u32 waiter_class(u32 tid, u32 tgid)
{
	if (tgid == cfg_get(CFG_VM_TGID))
		return WAITER_VM;
	if (ager_tids.lookup(&tid))
		return WAITER_AGER;
	char comm[TASK_COMM_LEN];
	bpf_get_current_comm(&comm, sizeof(comm));
	if (comm_is_kswapd(comm) || comm_is_kdamond(comm))
		return WAITER_AGER;
	return WAITER_OTHER;
}

/* Begins are stored from attach time on, so that a wait that began before
 * the window opened is still paired; ends count only inside the window. */
TRACEPOINT_PROBE(lock, contention_begin)
{
	struct start_key sk = start_key_of((u64)args->lock_addr);
	/* a mutex spins, then sleeps: two begins, one end; keep the first */
	if (starts.lookup(&sk))
		return 0;
	u64 id = bpf_get_current_pid_tgid();
	struct tstamp t = {.ts = bpf_ktime_get_ns(), .flags = args->flags, .stack_id = NO_STACK};
	t.waiter = waiter_class(id, id >> 32);
	t.aging = aging_get(AGING_ACTIVE) != 0;
	t.sections_ended = aging_get(AGING_ENDED);
#ifndef OTHER_STACKS
	if (t.waiter != WAITER_OTHER)
#endif
	{
		t.stack_id = stacks.get_stackid(args, 0);
		if (t.stack_id < 0)
			lost_inc(LOST_STACK);
	}
	if (starts.update(&sk, &t))
		lost_inc(LOST_THREADS_FULL);
	return 0;
}

TRACEPOINT_PROBE(lock, contention_end)
{
	struct start_key sk = start_key_of((u64)args->lock_addr);
	struct tstamp *t = starts.lookup(&sk);
	u64 now = bpf_ktime_get_ns();
	bool in_window = now >= cfg_get(CFG_START_NS) && now < cfg_get(CFG_END_NS);
	if (!t) {
		if (in_window)
			lost_inc(LOST_NO_BEGIN);
		return 0;
	}
	u64 wait = now - t->ts;
	struct contention_key key = {.stack_id = t->stack_id, .waiter = t->waiter, .lock = sk.lock};
	u32 flags = t->flags;
	bool behind = t->aging || aging_get(AGING_ACTIVE) || aging_get(AGING_ENDED) != t->sections_ended;
	starts.delete(&sk);
	if (!in_window)
		return 0;

	struct contention_val zero = {};
	struct contention_val *v = contended.lookup_or_try_init(&key, &zero);
	if (v) {
		__sync_fetch_and_add(&v->total_ns, wait);
		__sync_fetch_and_add(&v->count, 1);
		if (behind)
			__sync_fetch_and_add(&v->behind_ns, wait);
		if (wait > v->max_ns)
			v->max_ns = wait; /* racy max, as in perf: a lost update only lowers it */
		v->flags = flags;
	} else {
		lost_inc(LOST_ENTRIES_FULL);
	}

	u32 l2 = bpf_log2l(wait); /* slot i holds [2^(i-1), 2^i) ns, as BCC's log2 hists */
	if (l2 >= NR_SLOTS)
		l2 = NR_SLOTS - 1;
	int slot = key.waiter * NR_SLOTS + l2;
	u64 *h = wait_hist.lookup(&slot);
	if (h)
		__sync_fetch_and_add(h, 1);
	return 0;
}
