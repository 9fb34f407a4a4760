"""MGLRU: age and evict the VM's memcg through /sys/kernel/debug/lru_gen.

Drives the debugfs interface the way the KVM selftest access_tracking_perf_test
(tools/testing/selftests/kvm/lib/lru_gen_util.c) does: find our memcg's id and
each node's generations in the debugfs file, then write
  aging     ``+ memcg_id node_id max_gen_nr [can_swap [force_scan]]``
  eviction  ``- memcg_id node_id min_gen_nr [swappiness [nr_to_reclaim]]``
Aging with force_scan walks the mm's page tables and, for KVM, the MMU
notifier's test/clear-young path. It moves every page referenced since the
last aging into generation ``max_gen_nr`` (the youngest when the command was
written) and then opens a new, empty generation ``max_gen_nr + 1``. So after
a pass, the generation aged into holds the recently used pages: its size
estimates the hot set (``pages_found_idle`` counts the rest). MGLRU gives no
per-page answer, so the PassRecord carries no bitmap.

Options: ``enable`` (default True: turn MGLRU features on if needed, restored
afterwards), ``can_swap`` (1), ``force_scan`` (1), ``evict`` (False: after
aging, evict every generation older than the one aged into, i.e. the pages
not used since the previous pass), ``swappiness`` (0 without swap, else 60),
``evict_pages`` (nr_to_reclaim, 0 = unbounded), ``test_clear_young``
(``on``/``off``/``keep``: cap 0x0008 of a kernel with the test_clear_young
series, which harvests KVM's accessed bits without mmu_lock; default ``on``
on such a kernel, restored afterwards; ``off`` is the A side of a
comparison in one boot).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmctl.agers.base import Ager, AgerContext, Availability, Option, PassRecord, amount, yes_no
from kvmctl.errors import KvmctlError, UnsupportedError, UsageError
from kvmctl.knobs import read_knob, write_knob
from kvmctl.probe import probe_host
from kvmctl.probe.kernel import kernel_config
from kvmctl.probe.memory import (
    LRU_GEN_DEBUGFS,
    LRU_GEN_ENABLED,
    LRU_GEN_REQUIRED,
    LRU_GEN_SECONDARY_YOUNG,
    parse_lru_gen_features,
    probe_mglru,
    swap_total_bytes,
)

CAP_CHOICES = ("on", "off", "keep")


def cap_choice(value: object) -> str:
    """The ``test_clear_young`` option as on/off/keep (1/0 and true/false accepted)."""
    text = str(value).strip().lower()
    text = {"1": "on", "true": "on", "yes": "on", "0": "off", "false": "off", "no": "off"}.get(text, text)
    if text not in CAP_CHOICES:
        raise UsageError(f"--ager-opt test_clear_young={value} is not one of {', '.join(CAP_CHOICES)}",
                         "write --ager-opt test_clear_young=off (or on, keep)")
    return text


@dataclass(frozen=True)
class Generation:
    gen: int
    age_ms: int
    nr_anon: int
    nr_file: int


@dataclass
class MemcgGens:
    memcg_id: int
    path: str
    nodes: dict[int, list[Generation]] = field(default_factory=dict)

    def pages(self) -> int:
        return sum(g.nr_anon + g.nr_file for gens in self.nodes.values() for g in gens)

    def pages_in(self, gens: dict[int, int]) -> int:
        """Pages in generation ``gens[node]`` of each node."""
        return sum(g.nr_anon + g.nr_file for node, node_gens in self.nodes.items() for g in node_gens
                   if g.gen == gens.get(node))


def parse_lru_gen(text: str) -> dict[str, MemcgGens]:
    """The debugfs lru_gen file -> {memcg path: MemcgGens}.

    Format: ``memcg <id> <path>`` / ``node <id>`` / ``<gen> <age_ms> <nr_anon>
    <nr_file>`` (lru_gen_full adds columns; only the first four are used).
    """
    out: dict[str, MemcgGens] = {}
    cur: MemcgGens | None = None
    node: int | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        try:
            if tok[0] == "memcg":
                cur = MemcgGens(int(tok[1]), tok[2] if len(tok) > 2 else "")
                node = None
                # id 0: a memcg being removed; it cannot be addressed
                if cur.memcg_id:
                    out[cur.path] = cur
            elif tok[0] == "node":
                if cur is None:
                    raise ValueError("node before memcg")
                node = int(tok[1])
                cur.nodes[node] = []
            elif cur is not None and node is not None and tok[0].lstrip("-").isdigit():
                cur.nodes[node].append(Generation(int(tok[0]), int(tok[1]), int(tok[2]), int(tok[3])))
        except (ValueError, IndexError):
            raise KvmctlError(f"cannot parse line {lineno} of the lru_gen debugfs file: {line.strip()!r}",
                              "this kernel's lru_gen format is not supported; please report it") from None
    return out


def aging_command(memcg_id: int, node: int, max_gen: int, can_swap: int = 1, force_scan: int = 1) -> str:
    return f"+ {memcg_id} {node} {max_gen} {can_swap} {force_scan}"


def eviction_command(memcg_id: int, node: int, min_gen: int, swappiness: int, nr_to_reclaim: int = 0) -> str:
    cmd = f"- {memcg_id} {node} {min_gen} {swappiness}"
    return f"{cmd} {nr_to_reclaim}" if nr_to_reclaim else cmd


@dataclass
class MglruPass(PassRecord):
    lru_gen_commands: list[str] = field(default_factory=list)
    generations: list[dict[str, int]] = field(default_factory=list)  # per-generation counts after the pass
    pages_found_idle: int = 0  # pages outside the generation aged into
    usage_before: int | None = None  # with eviction
    usage_after: int | None = None
    bytes_reclaimed: int = 0


class MglruAger(Ager):
    name = "mglru"
    summary = "multi-gen LRU aging/eviction of the VM's memcg via /sys/kernel/debug/lru_gen"
    record_type = MglruPass
    options = (
        Option("enable", "turn MGLRU's features on if needed, restored afterwards; default true", yes_no),
        Option("can_swap", "the aging command's can_swap; default 1", amount),
        Option("force_scan", "the aging command's force_scan; default 1", amount),
        Option("evict", "after aging, evict the generations older than the one aged into; default false", yes_no),
        Option("swappiness", "the eviction command's swappiness; default 0 without swap, else 60", amount),
        Option("evict_pages", "the eviction command's nr_to_reclaim, 0 = unbounded; default 0", amount),
        Option("test_clear_young", "on, off or keep: lru_gen cap 0x0008 of a kernel with the test_clear_young "
                                   "series; default on there", cap_choice),
    )

    def __init__(self, enabled: Path = LRU_GEN_ENABLED, debugfs: Path = LRU_GEN_DEBUGFS):
        super().__init__()
        self.enabled_path = enabled
        self.debugfs = debugfs
        self._original_enabled: str | None = None
        self._hook = False  # the kernel has the test_clear_young series

    def availability(self) -> Availability:
        item = probe_mglru(kernel_config(), self.enabled_path, self.debugfs)
        return Availability.of(item, "MGLRU", f"{self.debugfs} (features {item.value})")

    def _write(self, path: Path, text: str) -> None:
        write_knob(path, text, "see dmesg; the generation numbers may have moved on")

    def _prepare(self, ctx: AgerContext) -> None:
        if ctx.cgroup is None:
            raise UsageError("the mglru ager needs the VM in an experiment cgroup", "create one with ExperimentCgroup.create()")
        current = (read_knob(self.enabled_path) or "").strip()
        features = parse_lru_gen_features(current)
        wanted = features
        if features & LRU_GEN_REQUIRED != LRU_GEN_REQUIRED:
            if not ctx.options.get("enable", True):
                raise UnsupportedError(f"MGLRU features are {current}, aging needs {LRU_GEN_REQUIRED:#x}",
                                       f"echo {LRU_GEN_REQUIRED:#x} > {self.enabled_path}, or allow enable")
            wanted |= LRU_GEN_REQUIRED
        wanted = self._with_cap(wanted, ctx)
        if wanted != features:
            self._original_enabled = current
            self._write(self.enabled_path, f"{wanted:#x}")
        if self._hook:
            now = parse_lru_gen_features(read_knob(self.enabled_path) or "0")
            if bool(now & LRU_GEN_SECONDARY_YOUNG) != bool(wanted & LRU_GEN_SECONDARY_YOUNG):
                raise UnsupportedError(f"{self.enabled_path} did not keep cap {LRU_GEN_SECONDARY_YOUNG:#06x} "
                                       f"(wrote {wanted:#06x}, reads {now:#06x})",
                                       "use a kernel with the test_clear_young series (kernels/test-clear-young)")
            self.settings["lru_gen_cap"] = "on" if now & LRU_GEN_SECONDARY_YOUNG else "off"
            self.settings["lru_gen_enabled"] = f"{now:#06x}"
        self._gens()  # fail early if our memcg is not listed

    def _with_cap(self, features: int, ctx: AgerContext) -> int:
        """The features with the test_clear_young cap as the option asks (default: on where the kernel has it)."""
        self._hook = bool((ctx.caps or probe_host(load_bpf=False)).test_clear_young)
        asked = "test_clear_young" in ctx.options
        choice = cap_choice(ctx.options.get("test_clear_young", "on" if self._hook else "keep"))
        if not self._hook:
            if asked and choice == "on":
                raise UnsupportedError("--ager-opt test_clear_young=on: this kernel lacks the test_clear_young "
                                       f"series, so {self.enabled_path} has no cap {LRU_GEN_SECONDARY_YOUNG:#06x}",
                                       "build it: scripts/build-lab-kernel.sh --patches kernels/test-clear-young")
            return features
        if choice == "on":
            return features | LRU_GEN_SECONDARY_YOUNG
        if choice == "off":
            return features & ~LRU_GEN_SECONDARY_YOUNG
        return features

    def _restore(self) -> None:
        if self._original_enabled is not None:
            original, self._original_enabled = self._original_enabled, None
            self._write(self.enabled_path, original)

    def _gens(self) -> MemcgGens:
        assert self.ctx is not None and self.ctx.cgroup is not None
        found = parse_lru_gen(read_knob(self.debugfs) or "").get(self.ctx.cgroup.rel)
        if found is None:
            raise UnsupportedError(f"memcg {self.ctx.cgroup.rel} is not listed in {self.debugfs}",
                                   "the experiment cgroup must be in the hierarchy MGLRU manages (cgroup memory controller)")
        return found

    def _run_pass(self, record: MglruPass) -> None:
        gens = self._gens()
        aged_into = {node: max(g.gen for g in node_gens) for node, node_gens in gens.nodes.items() if node_gens}
        for node, max_gen in sorted(aged_into.items()):
            cmd = aging_command(gens.memcg_id, node, max_gen,
                                int(self._option("can_swap", 1)), int(self._option("force_scan", 1)))
            self._issue(record, cmd)
        if self._option("evict", False):
            assert self.ctx is not None and self.ctx.cgroup is not None
            swappiness = int(self._option("swappiness", 60 if swap_total_bytes() else 0))
            record.usage_before = self.ctx.cgroup.usage_bytes()
            for node, node_gens in sorted(self._gens().nodes.items()):
                if not node_gens:
                    continue
                # Every generation older than the one just aged into: the pages not used since the
                # previous aging. The kernel keeps the two youngest (MIN_NR_GENS).
                upto = max(g.gen for g in node_gens) - 2
                if upto < min(g.gen for g in node_gens):
                    record.notes.append(f"node {node}: only {len(node_gens)} generations, nothing evictable")
                    continue
                cmd = eviction_command(gens.memcg_id, node, upto, swappiness, int(self._option("evict_pages", 0)))
                self._issue(record, cmd)
            record.usage_after = self.ctx.cgroup.usage_bytes()
            record.bytes_reclaimed = max(0, record.usage_before - record.usage_after)
        after = self._gens()
        record.generations = [{"node": n, "gen": g.gen, "age_ms": g.age_ms, "nr_anon": g.nr_anon, "nr_file": g.nr_file}
                              for n, gs in sorted(after.nodes.items()) for g in gs]
        young = after.pages_in(aged_into)
        record.pages_found_idle = after.pages() - young
        record.notes.append(f"generation(s) aged into {sorted(set(aged_into.values()))} hold {young} of "
                            f"{after.pages()} pages (used since the previous aging)")

    def _issue(self, record: MglruPass, cmd: str) -> None:
        record.lru_gen_commands.append(cmd)
        try:
            self._write(self.debugfs, cmd + "\n")
        except KvmctlError as err:
            # EINVAL when the generation moved on between read and write; the pass goes on.
            record.errors.append(err.message)
