/* Shared by the aging, notifier, spte, funcs and locks programs: the
 * experiment VM's memslot ranges, the configuration words Python writes
 * before attaching, the hva filter, the task classes of aging and notifier,
 * and the aging marker of funcs.c and spte.c.
 *
 * Only types and map-free helpers live here: BCC rewrites map accesses
 * (map.lookup()) in the main file only, and refuses them inside macros, so
 * each program declares its own `config` and `ranges` maps and the one-line
 * accessors that read them; the shared logic calls those accessors.
 *
 * An hva is only meaningful inside the VM process, and the aging
 * tracepoints fire in the ager's context (kswapd, kdamond, a reclaiming
 * task) and carry no mm: another process with a KVM mmu notifier and an
 * overlapping hva range would pass this filter. ASLR makes that unlikely;
 * the report states the filter is by address range.
 */
#ifndef KVMCTL_RANGES_H
#define KVMCTL_RANGES_H

#ifndef MAX_RANGES
#define MAX_RANGES 8
#endif
#define KVMCTL_PAGE_SHIFT 12
#define KVMCTL_PAGE_SIZE (1ULL << KVMCTL_PAGE_SHIFT)

/* Page i of the range [hva_start, hva_end) is guest frame gfn_start + i and
 * per-gfn array index index_base + i. */
struct slot_range {
	u64 hva_start;
	u64 hva_end;
	u64 gfn_start;
	u64 index_base;
};

/* The pages of [start, end) inside range r: how many (0 if none), and in
 * *first the index within r of the first of them. */
static __always_inline u64 range_pages(struct slot_range *r, u64 start, u64 end, u64 *first)
{
	u64 lo = start > r->hva_start ? start : r->hva_start;
	u64 hi = end < r->hva_end ? end : r->hva_end;
	if (lo >= hi)
		return 0;
	*first = (lo - r->hva_start) >> KVMCTL_PAGE_SHIFT;
	return ((hi - r->hva_start + KVMCTL_PAGE_SIZE - 1) >> KVMCTL_PAGE_SHIFT) - *first;
}

/* Configuration words, written from Python. Events count only while
 * CFG_START_NS <= bpf_ktime_get_ns() < CFG_END_NS, so the trace window is
 * exact on the CLOCK_MONOTONIC scale whatever the attach/detach latency. */
enum cfg {
	CFG_NR_RANGES = 0,
	CFG_VM_TGID = 1,
	CFG_START_NS = 2,
	CFG_END_NS = 3,
	CFG_NR_OTHERS = 4, /* aging.c: entries of its `others` map */
	NR_CFG = 5,
};

/* Keep a loop's constant bound visible to the verifier. Without it clang
 * rotates `for (i = 0; i < MAX; i++) if (i >= n) break;` into a loop around
 * a computed trip count min(n, MAX), which 6.1's verifier cannot bound
 * ("infinite loop detected" / "sequence of 8193 jumps is too complex").
 * The empty asm emits no instruction; it only hides i from the optimizer. */
#define bounded_loop_var(i) asm volatile("" : "+r"(i))

/* comm prefixes of the kernel's own agers; compared char by char because
 * BCC cannot load programs that reference string literals. */
static __always_inline bool comm_is_kswapd(const char *c)
{
	return c[0] == 'k' && c[1] == 's' && c[2] == 'w' && c[3] == 'a' && c[4] == 'p' && c[5] == 'd';
}

static __always_inline bool comm_is_kdamond(const char *c)
{
	return c[0] == 'k' && c[1] == 'd' && c[2] == 'a' && c[3] == 'm' && c[4] == 'o' && c[5] == 'n' &&
	       c[6] == 'd';
}

/* Who aged (programs that #define KVMCTL_TASK_CLASSES first and define
 * ager_tid_known() next to their ager_tids map). */
#ifdef KVMCTL_TASK_CLASSES
enum task_class {
	CLASS_OURS = 0,
	CLASS_KSWAPD = 1,
	CLASS_KDAMOND = 2,
	CLASS_VM = 3,
	CLASS_OTHER = 4,
	NR_CLASSES = 5,
};

static __always_inline bool ager_tid_known(u32 tid);

static __always_inline u32 classify(u32 tid, u32 tgid, u64 vm_tgid, const char *comm)
{
	if (ager_tid_known(tid))
		return CLASS_OURS;
	if (comm_is_kswapd(comm))
		return CLASS_KSWAPD;
	if (comm_is_kdamond(comm))
		return CLASS_KDAMOND;
	if (tgid == vm_tgid)
		return CLASS_VM;
	return CLASS_OTHER;
}
#endif

/* The hva filter (programs that #define KVMCTL_HVA_FILTER or
 * KVMCTL_AGING_MARKER first): whether a range touches our memslots. The
 * program defines the accessors declared here, next to its maps. */
#if defined(KVMCTL_HVA_FILTER) || defined(KVMCTL_AGING_MARKER)
static __always_inline u64 cfg_get(int which);
/* ranges[k], or 0 */
static __always_inline struct slot_range *range_lookup(int k);

static __always_inline bool hva_overlaps(u64 start, u64 end)
{
	u64 nr = cfg_get(CFG_NR_RANGES);
	for (int i = 0; i < MAX_RANGES; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		struct slot_range *r = range_lookup(i);
		if (!r)
			break;
		if (start < r->hva_end && end > r->hva_start)
			return true;
	}
	return false;
}
#endif

/* The aging marker (programs that #define KVMCTL_AGING_MARKER first):
 * remember which threads are inside an aging notifier call about our hva
 * ranges. The tracepoints fire just before KVM walks the range, so what the
 * thread does next (a probed function, an SPTE change) belongs to our VM.
 * The program defines aging_tid_mark() next to its maps and expands
 * AGING_MARKER_PROBES once. With -DWITH_TCY_BEGIN (kernels with the
 * test_clear_young series), the start of a lockless request marks too. */
#ifdef KVMCTL_AGING_MARKER
/* store (ours) or forget tid in the program's aging_tids map */
static __always_inline void aging_tid_mark(u32 tid, bool ours);

static __always_inline int mark_aging(u64 start, u64 end)
{
	aging_tid_mark(bpf_get_current_pid_tgid(), hva_overlaps(start, end));
	return 0;
}

#define AGING_MARKER_PROBES                                                    \
	TRACEPOINT_PROBE(kvm, kvm_age_hva)                                     \
	{                                                                      \
		return mark_aging(args->start, args->end);                     \
	}                                                                      \
	TRACEPOINT_PROBE(kvm, kvm_test_age_hva)                                \
	{                                                                      \
		return mark_aging(args->hva, args->hva + 1);                   \
	}                                                                      \
	TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range)                             \
	{                                                                      \
		return mark_aging(args->start, args->end);                     \
	}                                                                      \
	TCY_MARKER_PROBE

#ifdef WITH_TCY_BEGIN
#define TCY_MARKER_PROBE                                                       \
	TRACEPOINT_PROBE(kvm, kvm_test_clear_young)                            \
	{                                                                      \
		return mark_aging(args->start, args->end);                     \
	}
#else
#define TCY_MARKER_PROBE
#endif
#endif

#endif
