/* SPTE activity of the experiment VM.
 *
 * kvmmmu:kvm_mmu_set_spte: one per leaf SPTE installed by a vCPU of our VM
 * (tgid == CFG_VM_TGID) for a gfn of our memslots: per-gfn mapping counts
 * (a second mapping of a gfn is counted as a re-fault) and a level histogram.
 * kvmmmu:kvm_mmu_get_page: shadow pages created or reused by our vCPUs,
 * evidence that the VM runs on the shadow MMU (no TDP, or nested).
 * kvmmmu:kvm_tdp_mmu_spte_changed (TDP MMU only): SPTE changes whose old and
 * new value differ exactly in ACCESSED_MASK, with the bit set before, are
 * accessed-bit clears by aging ("bits cleared"), per gfn.
 *
 * spte_changed carries no VM identity and fires in the ager's context, so a
 * change counts as ours when it runs in a VM thread or in a task whose
 * latest aging notifier call (kvm_age_hva and friends, traced just before
 * KVM walks the range) touched our hva ranges.
 *
 * With -DWITH_HARVEST (needs WITH_TDP_SPTE_CHANGED), a flags word per gfn
 * follows what aging could have harvested: MAPPED tracks whether KVM maps
 * the gfn (set on kvm_mmu_set_spte, cleared on kvm_unmap_hva_range), and per
 * pass the gfn was aged (kvm_age_hva, kvm_test_age_hva, kvm_test_clear_young)
 * while mapped or not, had its accessed bit cleared, was mapped or unmapped.
 * Python reads the array at the end of each pass and clears all but MAPPED.
 *
 * Options (-D): MAX_RANGES, NR_PAGES, WITH_TDP_SPTE_CHANGED (the catalogue
 * chose the tracepoint), ACCESSED_MASK (bit 8 on EPT with A/D bits, bit 5 on
 * NPT and legacy paging; chosen from the host by Python), WITH_HARVEST,
 * MAX_PAGES_PER_EVENT (harvest: per-gfn loop bound of one aging event).
 */
#include <uapi/linux/ptrace.h>

#ifdef WITH_TDP_SPTE_CHANGED
#define KVMCTL_AGING_MARKER /* only the spte_changed attribution needs it: not attached otherwise */
#endif
#include "ranges.h"

#ifndef NR_PAGES
#define NR_PAGES 1
#endif
#ifndef ACCESSED_MASK
#define ACCESSED_MASK (1ULL << 5)
#endif
#ifndef MAX_AGING_TIDS
#define MAX_AGING_TIDS 4096
#endif
#ifndef MAX_PAGES_PER_EVENT
#define MAX_PAGES_PER_EVENT 512
#endif
#define NR_LEVELS 8

enum harvest_flag {
	HV_MAPPED = 1,          /* state: KVM maps the gfn */
	HV_AGED = 2,            /* an aging request covered the gfn this pass */
	HV_AGED_MAPPED = 4,     /* ... while it was mapped */
	HV_CLEARED = 8,         /* its accessed bit was cleared by aging */
	HV_SET = 16,            /* mapped (kvm_mmu_set_spte) this pass */
	HV_UNMAPPED = 32,       /* unmapped (kvm_unmap_hva_range) this pass */
};

enum spte_count {
	CNT_SET_SPTE = 0,        /* leaf SPTEs installed for our gfns */
	CNT_REFAULT = 1,         /* ... for a gfn already mapped in the window */
	CNT_SP_CREATED = 2,      /* shadow pages created by our vCPUs */
	CNT_SP_EXISTING = 3,     /* shadow pages looked up and reused */
	CNT_SPTE_CHANGED = 4,    /* TDP SPTE changes attributed to our VM */
	CNT_BITS_CLEARED = 5,    /* ... that cleared only the accessed bit */
	NR_SPTE_COUNTS = 6,
};

enum spte_lost {
	LOST_GFN_INDEX = 0,      /* gfn of our memslot past NR_PAGES (array capped) */
	LOST_AGING_TIDS_FULL = 1,
	LOST_HARVEST_CLIPPED = 2, /* pages of one aging event past MAX_PAGES_PER_EVENT */
	NR_SPTE_LOST = 3,
};

BPF_ARRAY(config, u64, NR_CFG);
BPF_ARRAY(ranges, struct slot_range, MAX_RANGES);
BPF_ARRAY(counts, u64, NR_SPTE_COUNTS);
BPF_ARRAY(set_levels, u64, NR_LEVELS);
BPF_ARRAY(sp_levels, u64, NR_LEVELS);
/* mmap()ed by Python; u64 values: array elements are 8-byte aligned anyway */
BPF_F_TABLE("array", u32, u64, mappings, NR_PAGES, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, u64, cleared, NR_PAGES, BPF_F_MMAPABLE);
BPF_HASH(aging_tids, u32, u8, MAX_AGING_TIDS);
BPF_ARRAY(lost, u64, NR_SPTE_LOST);
#ifdef WITH_HARVEST
BPF_F_TABLE("array", u32, u64, harvest, NR_PAGES, BPF_F_MMAPABLE);
#endif

static __always_inline u64 cfg_get(int which)
{
	u64 *v = config.lookup(&which);
	return v ? *v : 0;
}

static __always_inline void inc(int which)
{
	u64 *v = counts.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline void lost_inc(int which)
{
	u64 *v = lost.lookup(&which);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline bool in_window(void)
{
	u64 now = bpf_ktime_get_ns();
	return now >= cfg_get(CFG_START_NS) && now < cfg_get(CFG_END_NS);
}

static __always_inline struct slot_range *range_lookup(int k)
{
	return ranges.lookup(&k);
}

/* Per-gfn index of gfn in our memslots, or -1. */
static __always_inline s64 gfn_index(u64 gfn)
{
	u64 nr = cfg_get(CFG_NR_RANGES);
	for (int i = 0; i < MAX_RANGES; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		struct slot_range *r = range_lookup(i);
		if (!r)
			break;
		u64 pages = (r->hva_end - r->hva_start) >> KVMCTL_PAGE_SHIFT;
		if (gfn >= r->gfn_start && gfn < r->gfn_start + pages)
			return r->index_base + (gfn - r->gfn_start);
	}
	return -1;
}

static __always_inline bool from_our_vm(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == cfg_get(CFG_VM_TGID);
}

static __always_inline u64 *per_gfn_slot(u64 gfn, bool mapping)
{
	s64 index = gfn_index(gfn);
	if (index < 0)
		return 0;
	if (index >= NR_PAGES) {
		lost_inc(LOST_GFN_INDEX);
		return 0;
	}
	u32 idx = index;
	return mapping ? mappings.lookup(&idx) : cleared.lookup(&idx);
}

#ifdef WITH_TDP_SPTE_CHANGED
static __always_inline void aging_tid_mark(u32 tid, bool ours)
{
	u8 one = 1;
	if (!ours)
		aging_tids.delete(&tid);
	else if (aging_tids.update(&tid, &one))
		lost_inc(LOST_AGING_TIDS_FULL);
}
#endif

#ifdef WITH_HARVEST
static __always_inline void harvest_set(u32 idx, u64 bits)
{
	u64 *f = harvest.lookup(&idx);
	if (f)
		__sync_fetch_and_or(f, bits);
}

/* The gfns of [start, end) in the first memslot it touches: aged (or, with
 * unmap, unmapped). Aging and unmap events never span two memslots of one
 * VM in practice (they come from one host VMA); a second one would be
 * clipped and counted. */
static __always_inline void harvest_range(u64 start, u64 end, bool unmap)
{
	if (!in_window())
		return;
	u64 nr = cfg_get(CFG_NR_RANGES), first = 0, n = 0;
	for (int i = 0; i < MAX_RANGES; i++) {
		bounded_loop_var(i);
		if (i >= nr)
			break;
		struct slot_range *r = range_lookup(i);
		if (!r)
			break;
		n = range_pages(r, start, end, &first);
		if (!n)
			continue;
		first += r->index_base;
		break;
	}
	if (n > MAX_PAGES_PER_EVENT) {
		lost_inc(LOST_HARVEST_CLIPPED);
		n = MAX_PAGES_PER_EVENT;
	}
	for (u32 i = 0; i < MAX_PAGES_PER_EVENT; i++) {
		bounded_loop_var(i);
		if (i >= n)
			break;
		u64 index = first + i;
		if (index >= NR_PAGES) {
			lost_inc(LOST_GFN_INDEX);
			break;
		}
		u32 idx = index;
		u64 *f = harvest.lookup(&idx);
		if (!f)
			break;
		if (unmap) {
			__sync_fetch_and_and(f, ~(u64)HV_MAPPED);
			__sync_fetch_and_or(f, HV_UNMAPPED);
		} else {
			__sync_fetch_and_or(f, HV_AGED | ((*f & HV_MAPPED) ? HV_AGED_MAPPED : 0));
		}
	}
}

/* the aging marker's probes, which also follow the gfns each event covers */
TRACEPOINT_PROBE(kvm, kvm_age_hva)
{
	harvest_range(args->start, args->end, false);
	return mark_aging(args->start, args->end);
}

TRACEPOINT_PROBE(kvm, kvm_test_age_hva)
{
	harvest_range(args->hva, args->hva + 1, false);
	return mark_aging(args->hva, args->hva + 1);
}

TRACEPOINT_PROBE(kvm, kvm_unmap_hva_range)
{
	harvest_range(args->start, args->end, true);
	return mark_aging(args->start, args->end);
}

#ifdef WITH_TCY_BEGIN
TRACEPOINT_PROBE(kvm, kvm_test_clear_young)
{
	harvest_range(args->start, args->end, false);
	return mark_aging(args->start, args->end);
}
#endif
#elif defined(WITH_TDP_SPTE_CHANGED)
AGING_MARKER_PROBES
#endif

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_set_spte)
{
	if (!in_window() || !from_our_vm())
		return 0;
	u64 *n = per_gfn_slot(args->gfn, true);
	if (!n)
		return 0;
	/* read-then-add: BCC's LLVM cannot use the old value of an atomic add;
	 * two vCPUs mapping the same gfn at the same instant may both read 0 */
	if (*n > 0)
		inc(CNT_REFAULT);
	__sync_fetch_and_add(n, 1);
	inc(CNT_SET_SPTE);
#ifdef WITH_HARVEST
	s64 index = gfn_index(args->gfn);
	if (index >= 0 && index < NR_PAGES)
		harvest_set(index, HV_MAPPED | HV_SET);
#endif
	int level = args->level & (NR_LEVELS - 1);
	u64 *l = set_levels.lookup(&level);
	if (l)
		__sync_fetch_and_add(l, 1);
	return 0;
}

TRACEPOINT_PROBE(kvmmmu, kvm_mmu_get_page)
{
	if (!in_window() || !from_our_vm())
		return 0;
	if (!args->created) {
		inc(CNT_SP_EXISTING);
		return 0;
	}
	inc(CNT_SP_CREATED);
	int level = args->role & 0xf; /* union kvm_mmu_page_role: level is bits 0-3 */
	level &= NR_LEVELS - 1;
	u64 *l = sp_levels.lookup(&level);
	if (l)
		__sync_fetch_and_add(l, 1);
	return 0;
}

#ifdef WITH_TDP_SPTE_CHANGED
TRACEPOINT_PROBE(kvmmmu, kvm_tdp_mmu_spte_changed)
{
	if (!in_window())
		return 0;
	u32 tid = bpf_get_current_pid_tgid();
	if (!from_our_vm() && !aging_tids.lookup(&tid))
		return 0;
	s64 index = gfn_index(args->gfn);
	if (index < 0)
		return 0;
	inc(CNT_SPTE_CHANGED);
	u64 old = args->old_spte, new = args->new_spte;
	if ((old ^ new) == ACCESSED_MASK && (old & ACCESSED_MASK)) {
		inc(CNT_BITS_CLEARED);
		u64 *n = per_gfn_slot(args->gfn, false);
		if (n)
			__sync_fetch_and_add(n, 1);
#ifdef WITH_HARVEST
		if (index < NR_PAGES)
			harvest_set(index, HV_CLEARED);
#endif
	}
	return 0;
}
#endif
