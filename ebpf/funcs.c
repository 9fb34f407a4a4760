/* kprobe/kretprobe on KVM's aging functions: latency, return values, and
 * which path (TDP MMU or rmap) each aging call took.
 *
 * Python attaches enter_<i>/leave_<i> to the function it numbered i (the
 * catalogue chose them from /proc/kallsyms) and writes each function's role
 * into fn_role: OUTER_AGE/OUTER_TEST are the arch entry points
 * (kvm_age_gfn, kvm_test_age_gfn), TDP and RMAP the per-MMU walkers they
 * call. While an outer call runs, the walkers entered by the same thread set
 * path bits; the outer return counts the call under none/tdp/rmap/both.
 *
 * Calls count only in threads whose latest aging notifier call touched our
 * hva ranges (the tracepoints fire just before KVM walks the range), so other
 * VMs on the host do not leak in. All probed functions return bool, so only
 * the low byte of the return register counts. Options (-D): MAX_RANGES,
 * MAX_THREADS. Enum values are mirrored in kvmctl/trace/records.py.
 */
#include <uapi/linux/ptrace.h>

#define KVMCTL_AGING_MARKER
#include "ranges.h"

#define NR_FUNCS 8 /* FUNC_PROBES instances below */
#ifndef MAX_THREADS
#define MAX_THREADS 4096
#endif
#define NR_SLOTS 64

enum fn_role {
	ROLE_OUTER_AGE = 0,
	ROLE_OUTER_TEST = 1,
	ROLE_TDP = 2,
	ROLE_RMAP = 3,
	ROLE_OTHER = 4,
};

enum path_bits {
	PATH_TDP = 1,
	PATH_RMAP = 2,
	NR_PATHS = 4, /* none, tdp, rmap, both */
};

enum funcs_lost {
	LOST_ENTRY_FULL = 0,     /* entry timestamp not stored: map full */
	LOST_NO_ENTRY = 1,       /* return without a stored entry */
	NR_FUNCS_LOST = 2,
};

struct fkey {
	u32 tid;
	u32 fn;
};

struct fstats {
	u64 calls;
	u64 nonzero;    /* returns != 0: young for the aging functions */
	u64 ret_sum;
	u64 total_ns;
	u64 max_ns;
};

BPF_ARRAY(config, u64, NR_CFG);
BPF_ARRAY(ranges, struct slot_range, MAX_RANGES);
BPF_ARRAY(fn_role, u32, NR_FUNCS);
BPF_HASH(entry_ts, struct fkey, u64, MAX_THREADS);
BPF_HASH(aging_tids, u32, u8, MAX_THREADS);
BPF_HASH(outer_path, u32, u32, MAX_THREADS);
BPF_ARRAY(stats, struct fstats, NR_FUNCS);
BPF_ARRAY(lat_hist, u64, NR_FUNCS * NR_SLOTS);
BPF_ARRAY(path_counts, u64, 2 * NR_PATHS); /* [outer age|test][path bits] */
BPF_ARRAY(lost, u64, NR_FUNCS_LOST);

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

static __always_inline struct slot_range *range_lookup(int k)
{
	return ranges.lookup(&k);
}

static __always_inline void aging_tid_mark(u32 tid, bool ours)
{
	u8 one = 1;
	if (ours)
		aging_tids.update(&tid, &one);
	else
		aging_tids.delete(&tid);
}

AGING_MARKER_PROBES

static __always_inline u32 role_of(u32 fn)
{
	u32 *r = fn_role.lookup(&fn);
	return r ? *r : ROLE_OTHER;
}

/* Entries are stored from attach time on; returns count only inside the
 * window, so a call that straddles the window opening is still paired. */
static __always_inline int on_enter(u32 fn)
{
	u64 now = bpf_ktime_get_ns();
	u32 tid = bpf_get_current_pid_tgid();
	if (!aging_tids.lookup(&tid))
		return 0;
	struct fkey key = {.tid = tid, .fn = fn};
	if (entry_ts.update(&key, &now)) {
		lost_inc(LOST_ENTRY_FULL);
		return 0;
	}
	u32 role = role_of(fn);
	if (role == ROLE_OUTER_AGE || role == ROLE_OUTER_TEST) {
		u32 none = 0;
		outer_path.update(&tid, &none);
	} else if (role == ROLE_TDP || role == ROLE_RMAP) {
		u32 *bits = outer_path.lookup(&tid);
		if (bits)
			*bits |= role == ROLE_TDP ? PATH_TDP : PATH_RMAP;
	}
	return 0;
}

static __always_inline int on_leave(struct pt_regs *ctx, u32 fn)
{
	u32 tid = bpf_get_current_pid_tgid();
	struct fkey key = {.tid = tid, .fn = fn};
	u64 *ts = entry_ts.lookup(&key);
	u64 now = bpf_ktime_get_ns();
	bool in_window = now >= cfg_get(CFG_START_NS) && now < cfg_get(CFG_END_NS);
	if (!ts) {
		if (in_window && aging_tids.lookup(&tid))
			lost_inc(LOST_NO_ENTRY);
		return 0;
	}
	u64 lat = now - *ts;
	entry_ts.delete(&key);
	u32 role = role_of(fn);
	if (!in_window) {
		if (role == ROLE_OUTER_AGE || role == ROLE_OUTER_TEST)
			outer_path.delete(&tid);
		return 0;
	}
	u64 ret = PT_REGS_RC(ctx) & 0xff;

	struct fstats *s = stats.lookup(&fn);
	if (s) {
		__sync_fetch_and_add(&s->calls, 1);
		__sync_fetch_and_add(&s->total_ns, lat);
		if (ret)
			__sync_fetch_and_add(&s->nonzero, 1);
		__sync_fetch_and_add(&s->ret_sum, ret);
		if (lat > s->max_ns)
			s->max_ns = lat;
	}
	u32 l2 = bpf_log2l(lat);
	if (l2 >= NR_SLOTS)
		l2 = NR_SLOTS - 1;
	int slot = fn * NR_SLOTS + l2;
	u64 *h = lat_hist.lookup(&slot);
	if (h)
		__sync_fetch_and_add(h, 1);

	if (role == ROLE_OUTER_AGE || role == ROLE_OUTER_TEST) {
		u32 *bits = outer_path.lookup(&tid);
		if (bits) {
			int p = (role == ROLE_OUTER_TEST) * NR_PATHS + (*bits & (NR_PATHS - 1));
			u64 *c = path_counts.lookup(&p);
			if (c)
				__sync_fetch_and_add(c, 1);
			outer_path.delete(&tid);
		}
	}
	return 0;
}

/* One entry/return pair per function number; Python attaches the first
 * NR_FUNCS it needs. */
#define FUNC_PROBES(n)                                                         \
	int enter_##n(struct pt_regs *ctx) { return on_enter(n); }             \
	int leave_##n(struct pt_regs *ctx) { return on_leave(ctx, n); }

FUNC_PROBES(0)
FUNC_PROBES(1)
FUNC_PROBES(2)
FUNC_PROBES(3)
FUNC_PROBES(4)
FUNC_PROBES(5)
FUNC_PROBES(6)
FUNC_PROBES(7)
