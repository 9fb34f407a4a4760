"""Attach the planned BPF programs to one VM, copy their maps out as records.

    plan = make_plan(kernel_offer())
    with Tracer(plan, target) as tracer:       # start(): compile, attach, open the window
        ...run epochs and ager passes...
        per_pass = tracer.snapshot()            # maps copied out, window still open
    result = tracer.collect()                   # final figures; everything detached

The programs attach when BCC loads them but count nothing until the window
opens: every program reads the same CFG_START_NS/CFG_END_NS words and counts
an event only if start <= bpf_ktime_get_ns() < end. Both edges are set a few
milliseconds in the future and we wait for them to pass, so all programs
share one exact CLOCK_MONOTONIC window (time.monotonic_ns() is the same
clock as bpf_ktime_get_ns()).
"""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import itertools
import math
import mmap
import time
from pathlib import Path

import numpy as np

from kvmctl import cleanup
from kvmctl.errors import KvmctlError, UnsupportedError, UsageError
from kvmctl.trace import hist, stacks
from kvmctl.trace.catalogue import TCY_BEGIN, TracePlan
from kvmctl.kvm.memslot import Memslot
from kvmctl.trace.loader import Headers, LoadedProgram, find_headers, load_program
from kvmctl.trace.records import (
    AgeOp,
    AgingCounts,
    AgingLost,
    AgingPath,
    AgingSeries,
    CallCount,
    Cfg,
    ContentionRow,
    EventKind,
    FuncLatency,
    FuncRole,
    FuncsLost,
    HarvestFlag,
    LocksLost,
    NotifierCount,
    NotifierCounts,
    NotifierLost,
    NotifierPath,
    PerGfnCounts,
    SpteCount,
    SpteCounts,
    SpteLost,
    TaskCount,
    TraceResult,
    TraceTarget,
)
from kvmctl.vocab import TaskClass, TraceWindow, WaiterClass

MAX_RANGES = 8  # -DMAX_RANGES: memslots per VM we filter on
DEFAULT_PER_GFN_CAP = 1 << 22  # 16 GiB of 4 KiB pages (about 224 MiB of per-gfn maps at that size)
# Counted in the totals, missing only from a per-gfn view: partial detail, not lost events.
# Keyed by name: IntEnum members of different enums compare equal by value.
_PARTIAL = {"locks.stack", "aging.gfn_clipped", "aging.gfn_index", "spte.gfn_index", "spte.harvest_clipped"}
MAX_SHARED = 16  # -DMAX_OTHERS of aging.c: hva pieces another KVM process maps too
NO_GFN = 1 << 52  # gfn_start of a range whose guest-physical place is unknown: beyond any gfn
NR_SLOTS = 64
U64_MAX = (1 << 64) - 1
EDGE_MARGIN_NS = 20_000_000  # window edges are set this far ahead, then awaited


@dataclasses.dataclass
class TracerOptions:
    bucket_ns: int = 100_000_000
    max_duration_s: float = 3600.0  # time series length; later events count as lost
    per_gfn_cap: int = DEFAULT_PER_GFN_CAP
    max_pages_per_event: int = 512  # per-gfn loop bound in aging.c (one 2 MiB huge page)


class Tracer:
    """BPF programs of one :class:`TracePlan` attached to one VM."""

    def __init__(self, plan: TracePlan, target: TraceTarget, options: TracerOptions | None = None,
                 headers: Headers | None = None):
        _check_ranges(target.memslots, target.shared)
        self.plan = plan
        self.target = target
        self.options = options or TracerOptions()
        self._headers = headers
        self._programs: dict[str, LoadedProgram] = {}
        self._func_ids: dict[str, int] = {}
        self._cleanup: cleanup.Handle | None = None
        self.window: TraceWindow | None = None
        self._final: TraceResult | None = None
        self.notes: list[str] = list(plan.offer.notes)
        self.nr_pages = min(target.guest_pages, self.options.per_gfn_cap)
        self.nr_buckets = max(1, math.ceil(self.options.max_duration_s * 1e9 / self.options.bucket_ns))
        if target.guest_pages > self.nr_pages:
            self.notes.append(f"per-gfn counts cover the first {self.nr_pages} of {target.guest_pages} guest pages")

    # lifecycle

    def __enter__(self) -> Tracer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.window is not None and self.window.end_ns is None

    def start(self) -> TraceWindow:
        """Compile and attach every planned program, then open the common window."""
        if self.window is not None:
            raise UsageError("this tracer was already started", "create a new Tracer for a new window")
        self._cleanup = cleanup.register("detach kvmctl BPF programs", self._detach)
        try:
            headers = self._headers or find_headers()
            for name in sorted(self.plan.programs()):
                prog = load_program(name, self._cflags(name), headers)
                self._programs[name] = prog
                self._configure(prog)
            for note in {n for p in self._programs.values() for n in p.notes}:
                self.notes.append(note)
            if "funcs.c" in self._programs:
                self._attach_functions(self._programs["funcs.c"])
            # START in the future first (END is still 0: closed), then END open
            start_ns = time.monotonic_ns() + EDGE_MARGIN_NS
            self._write_all(Cfg.START_NS, start_ns)
            self._write_all(Cfg.END_NS, U64_MAX)
            self._check_edge("start", start_ns)
            self.window = TraceWindow(start_ns)
            self._await(start_ns)
        except BaseException:
            self.stop()
            raise
        return self.window

    def stop(self) -> None:
        """Close the window, keep the final figures, detach everything. Idempotent.

        Safe in finally blocks and signal paths: interrupted while waiting
        for the end edge, it closes the window at once and still reads the
        maps, so an interrupted run keeps its (partial) figures.
        """
        try:
            if self.running:
                end_ns = time.monotonic_ns() + EDGE_MARGIN_NS
                self._write_all(Cfg.END_NS, end_ns)
                self._check_edge("end", end_ns)
                try:
                    self._await(end_ns)
                except BaseException:
                    end_ns = time.monotonic_ns()
                    self._write_all(Cfg.END_NS, end_ns)
                    self.notes.append("window closed early by an interrupt: programs may disagree by "
                                      "microseconds at its end")
                    raise
                finally:
                    self.window.end_ns = end_ns
                    self._final = self._read()
        finally:
            if self._cleanup is not None:
                handle, self._cleanup = self._cleanup, None
                handle.release()

    def add_ager_tid(self, tid: int) -> None:
        """Count a thread as one of our agers from now on (it may start after the tracer)."""
        self.target.ager_tids.add(tid)
        for prog in self._programs.values():
            table = _table(prog, "ager_tids")
            if table is not None:
                table[ctypes.c_uint32(tid)] = ctypes.c_uint8(1)

    def aging_totals(self) -> AgingCounts | None:
        """The aging counts so far, without tasks, series or per-gfn views: cheap enough for every interval."""
        prog = self._programs.get("aging.c")
        if prog is None or not self.running:
            return None
        totals, shared, nc = _table(prog, "totals"), _table(prog, "ambiguous"), len(TaskClass)
        by_kind_class = {kind.label: {cls.value: CallCount(int(leaf.calls), int(leaf.pages))
                                      for cls in TaskClass for leaf in (totals[ctypes.c_int(kind * nc + cls.code)],)}
                         for kind in EventKind}
        ambiguous = {kind.label: CallCount(int(leaf.calls), int(leaf.pages))
                     for kind in EventKind for leaf in (shared[ctypes.c_int(kind)],)}
        return AgingCounts(by_kind_class, [], ambiguous)

    def snapshot(self) -> TraceResult:
        """The figures so far; the window stays open."""
        if not self.running:
            raise UsageError("snapshot() needs a running tracer", "call start() first, or collect() after stop()")
        return self._read()

    def running_totals(self) -> TraceResult:
        """Only the counters a pass's figures are differences of: aging totals per kind and class (no
        tasks, series or per-gfn arrays), function and notifier counts. Reading them takes about a
        millisecond where snapshot() takes hundreds, so the window a pass's calls were counted in,
        ``read_ns`` of the totals before it to ``read_ns`` of those after it, hugs the pass."""
        if not self.running:
            raise UsageError("running_totals() needs a running tracer", "call start() first")
        start = time.monotonic_ns()
        result = TraceResult(TraceWindow(self.window.start_ns, self.window.end_ns), {}, {})
        if (prog := self._programs.get("aging.c")) is not None:
            result.aging = AgingCounts(self._aging_totals(prog), [])
        if (prog := self._programs.get("funcs.c")) is not None:
            self._read_funcs(prog, result)
        if (prog := self._programs.get("notifier.c")) is not None:
            self._read_notifier(prog, result)
        result.read_ns = (start, time.monotonic_ns())
        return result

    def run_time_ns(self) -> dict[str, tuple[int, int]]:
        """Per program source (e.g. ``locks.c``): (run time, runs) of its attached programs so far.

        From the kernel's BPF statistics; both stay 0 unless kernel.bpf_stats_enabled is 1 (the
        caller enables it).
        """
        out = {}
        for name, prog in self._programs.items():
            total = runs = 0
            for func in prog.bpf.funcs.values():
                info = _fdinfo(func.fd)
                total += info.get("run_time_ns", 0)
                runs += info.get("run_cnt", 0)
            out[name] = (total, runs)
        return out

    def harvest_take(self) -> np.ndarray | None:
        """The per-gfn harvest flags since the last take (HarvestFlag bits), reset to the MAPPED state.

        Events between the copy and the reset are lost to both passes; take
        it while the guest is quiet (between passes).
        """
        prog = self._programs.get("spte.c")
        if prog is None or "aging.harvest" not in self.plan.points:
            return None
        table = _table(prog, "harvest")
        length = -(-self.nr_pages * 8 // mmap.PAGESIZE) * mmap.PAGESIZE
        mm = mmap.mmap(table.map_fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            flags = np.frombuffer(mm, dtype="<u8", count=self.nr_pages)
            taken = flags.copy()
            flags &= np.uint64(HarvestFlag.MAPPED)
            del flags  # the buffer must be released before the mmap closes
        finally:
            mm.close()
        return taken.astype(np.uint8)

    def collect(self) -> TraceResult:
        """Final figures of a stopped tracer (stops it if still running)."""
        if self.window is None:
            raise UsageError("the tracer never started", "call start() before collect()")
        self.stop()
        if self._final is None:
            raise KvmctlError("the tracer stopped before its maps were read", "see the error that stopped it")
        return self._final

    # setup

    def _cflags(self, name: str) -> list[str]:
        flags = [f"-DMAX_RANGES={MAX_RANGES}", f"-DMAX_OTHERS={MAX_SHARED}"]
        if name in ("aging.c", "spte.c"):
            flags.append(f"-DNR_PAGES={max(1, self.nr_pages)}")
        if name == "aging.c":
            flags += [f"-DBUCKET_NS={self.options.bucket_ns}ULL", f"-DNR_BUCKETS={self.nr_buckets}",
                      f"-DMAX_PAGES_PER_EVENT={self.options.max_pages_per_event}"]
        if name == "spte.c" and "aging.bits_cleared" in self.plan.points:
            flags += ["-DWITH_TDP_SPTE_CHANGED", f"-DACCESSED_MASK={self.plan.accessed_mask:#x}ULL"]
        if name == "spte.c" and "aging.harvest" in self.plan.points:
            flags += ["-DWITH_HARVEST", f"-DMAX_PAGES_PER_EVENT={self.options.max_pages_per_event}"]
        if name == "aging.c" and "aging.notifier_paths" in self.plan.points:
            flags.append("-DWITH_AGE_NOTIFIER")
        if name == "notifier.c" and "aging.request_latency" in self.plan.points:
            flags.append("-DWITH_REQUEST_BEGIN")
        if name in ("spte.c", "funcs.c") and TCY_BEGIN in self.plan.offer.tracepoint_fields:
            flags.append("-DWITH_TCY_BEGIN")  # the aging marker: the start of a lockless request too
        if name == "locks.c" and "contention.behind_aging" in self.plan.points:
            flags.append("-DAGING_SECTIONS")
        return flags

    def _configure(self, prog: LoadedProgram) -> None:
        config = _table(prog, "config")
        config[ctypes.c_int(Cfg.VM_TGID)] = ctypes.c_uint64(self.target.vm_tgid)
        self._write_ranges(prog)
        agers = _table(prog, "ager_tids")
        if agers is not None:
            for tid in self.target.ager_tids:
                agers[ctypes.c_uint32(tid)] = ctypes.c_uint8(1)

    def _write_ranges(self, prog: LoadedProgram) -> None:
        """The target's ranges and shared pieces into one program's maps.

        While attached, an array element update is not atomic against a
        reader: each count drops to 0, the entries change, then the count
        rises again. Events in those microseconds are not counted.
        """
        config = _table(prog, "config")
        ranges = _table(prog, "ranges")
        if ranges is not None:
            config[ctypes.c_int(Cfg.NR_RANGES)] = ctypes.c_uint64(0)
            for i, (m, base) in enumerate(zip(self.target.memslots, self.target.index_bases(), strict=True)):
                gfn = m.gfn_start if m.gfn_start is not None else NO_GFN
                ranges[ctypes.c_int(i)] = ranges.Leaf(m.hva_start, m.hva_end, gfn, base)
        config[ctypes.c_int(Cfg.NR_RANGES)] = ctypes.c_uint64(len(self.target.memslots))
        others = _table(prog, "others")
        if others is not None:
            config[ctypes.c_int(Cfg.NR_OTHERS)] = ctypes.c_uint64(0)
            for i, (start, end) in enumerate(self.target.shared):
                others[ctypes.c_int(i)] = others.Leaf(start, end)
            config[ctypes.c_int(Cfg.NR_OTHERS)] = ctypes.c_uint64(len(self.target.shared))

    def update_ranges(self, memslots: list[Memslot], shared: list[tuple[int, int]]) -> None:
        """Filter on new ranges from now on (a rescan found the VM's memory elsewhere, or new sharers).

        Per-gfn counts keep their array: pages past its length count as lost (aging.gfn_index).
        """
        _check_ranges(memslots, shared)
        self.target.memslots, self.target.shared = list(memslots), list(shared)
        for prog in self._programs.values():
            self._write_ranges(prog)

    def _attach_functions(self, prog: LoadedProgram) -> None:
        roles = _table(prog, "fn_role")
        for i, (symbol, role) in enumerate(self.plan.functions.items()):
            roles[ctypes.c_int(i)] = ctypes.c_uint32(role)
            try:
                prog.bpf.attach_kprobe(event=symbol.encode(), fn_name=f"enter_{i}".encode())
                prog.bpf.attach_kretprobe(event=symbol.encode(), fn_name=f"leave_{i}".encode())
            except KvmctlError:  # Interrupted by a signal: not the kernel's verdict
                raise
            except Exception as err:  # BCC raises bare Exception
                raise UnsupportedError(f"cannot attach a kprobe to {symbol}: {err}",
                                       "check 'kvmctl info' for kprobe support on this kernel") from None
            self._func_ids[symbol] = i

    def _write_all(self, which: Cfg, value: int) -> None:
        for prog in self._programs.values():
            _table(prog, "config")[ctypes.c_int(which)] = ctypes.c_uint64(value)

    def _check_edge(self, which: str, edge_ns: int) -> None:
        late = time.monotonic_ns() - edge_ns
        if late > 0:  # this process was stalled longer than EDGE_MARGIN_NS
            self.notes.append(f"window {which} was written {late} ns after it passed: "
                              "programs may disagree by that much at this edge")

    @staticmethod
    def _await(edge_ns: int) -> None:
        while (left := edge_ns - time.monotonic_ns()) > 0:
            time.sleep(left / 1e9)

    def _detach(self) -> None:
        if self.running:  # detached by the cleanup stack before stop() read the maps
            self.window.end_ns = time.monotonic_ns()
        programs, self._programs = self._programs, {}
        for prog in programs.values():
            # Ours to run, once: BCC's own atexit cleanup would redo one a signal cut short and
            # trip over the fds it had closed (a traceback at exit). The kernel detaches the rest
            # when the process exits.
            atexit.unregister(prog.bpf.cleanup)
            prog.bpf.cleanup()

    # reading

    def _mapped(self, prog: LoadedProgram, name: str, dtype, count: int) -> np.ndarray:
        """A copy of an mmap()able BPF array (BPF_F_MMAPABLE) of ``count`` elements."""
        table = _table(prog, name)
        dtype = np.dtype(dtype)
        length = -(-count * dtype.itemsize // mmap.PAGESIZE) * mmap.PAGESIZE
        mm = mmap.mmap(table.map_fd, length, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            return np.frombuffer(mm, dtype=dtype, count=count).copy()
        finally:
            mm.close()

    def _read(self) -> TraceResult:
        window = TraceWindow(self.window.start_ns, self.window.end_ns)
        result = TraceResult(window, dict(self.plan.chosen), dict(self.plan.not_observable),
                             notes=list(self.notes))
        if (prog := self._programs.get("aging.c")) is not None:
            self._read_aging(prog, result)
        if (prog := self._programs.get("spte.c")) is not None:
            self._read_spte(prog, result)
        if (prog := self._programs.get("locks.c")) is not None:
            self._read_locks(prog, result)
        if (prog := self._programs.get("funcs.c")) is not None:
            self._read_funcs(prog, result)
        if (prog := self._programs.get("notifier.c")) is not None:
            self._read_notifier(prog, result)
        return result

    def _read_lost(self, prog: LoadedProgram, prefix: str, names: type, result: TraceResult) -> None:
        table = _table(prog, "lost")
        for item in names:
            key = f"{prefix}.{item.name.lower()}"
            (result.partial if key in _PARTIAL else result.lost)[key] = int(table[ctypes.c_int(item)].value)

    @staticmethod
    def _aging_totals(prog: LoadedProgram) -> dict[str, dict[str, CallCount]]:
        nc = len(TaskClass)
        totals = _table(prog, "totals")
        by_kind_class: dict[str, dict[str, CallCount]] = {}
        for kind in EventKind:
            row = by_kind_class.setdefault(kind.label, {})
            for cls in TaskClass:
                leaf = totals[ctypes.c_int(kind * nc + cls.code)]
                row[cls.value] = CallCount(int(leaf.calls), int(leaf.pages))
        return by_kind_class

    def _read_aging(self, prog: LoadedProgram, result: TraceResult) -> None:
        nk, nc, window = len(EventKind), len(TaskClass), result.window
        by_kind_class = self._aging_totals(prog)
        tasks = [
            TaskCount(k.pid, k.tgid, k.comm.decode(errors="replace"), EventKind(k.kind).label, int(v.calls),
                      int(v.pages))
            for k, v in _table(prog, "by_task").items()
        ]
        tasks.sort(key=lambda t: (-t.calls, t.pid))
        shared = _table(prog, "ambiguous")
        ambiguous = {kind.label: CallCount(int(leaf.calls), int(leaf.pages))
                     for kind in EventKind for leaf in (shared[ctypes.c_int(kind)],)}
        result.aging = AgingCounts(by_kind_class, tasks, ambiguous)

        counters = self._mapped(prog, "series", np.dtype([("calls", "<u8"), ("pages", "<u8")]),
                                self.nr_buckets * nk * nc)
        counters = counters.reshape(self.nr_buckets, nk, nc)
        elapsed = (window.end_ns or time.monotonic_ns()) - window.start_ns
        used = min(self.nr_buckets, max(0, -(-elapsed // self.options.bucket_ns)))
        result.series = AgingSeries(self.window.start_ns, self.options.bucket_ns,
                                    counters["calls"][:used].copy(), counters["pages"][:used].copy())

        per = self._mapped(prog, "per_gfn", "<u8", nk * self.nr_pages).reshape(nk, self.nr_pages)
        result.per_gfn = PerGfnCounts(list(self.target.memslots), self.nr_pages,
                                      {kind.label: per[kind].copy() for kind in EventKind})
        self._read_lost(prog, "aging", AgingLost, result)

    def _read_spte(self, prog: LoadedProgram, result: TraceResult) -> None:
        counts = _table(prog, "counts")

        def count(c: SpteCount) -> int:
            return int(counts[ctypes.c_int(c)].value)

        tdp = "aging.bits_cleared" in self.plan.points
        result.spte = SpteCounts(
            set_spte=count(SpteCount.SET_SPTE),
            refaults=count(SpteCount.REFAULT),
            shadow_pages_created=count(SpteCount.SP_CREATED),
            shadow_pages_existing=count(SpteCount.SP_EXISTING),
            spte_changed=count(SpteCount.SPTE_CHANGED) if tdp else None,
            bits_cleared=count(SpteCount.BITS_CLEARED) if tdp else None,
            set_levels=_nonzero(_table(prog, "set_levels")),
            shadow_page_levels=_nonzero(_table(prog, "sp_levels")),
            mappings_per_gfn=self._mapped(prog, "mappings", "<u8", self.nr_pages),
            cleared_per_gfn=self._mapped(prog, "cleared", "<u8", self.nr_pages) if tdp else None,
        )
        self._read_lost(prog, "spte", SpteLost, result)

    def _read_locks(self, prog: LoadedProgram, result: TraceResult) -> None:
        bpf = prog.bpf
        stack_table = _table(prog, "stacks")
        frames_of: dict[int, list[str]] = {}

        def frames(stack_id: int) -> list[str]:
            if stack_id < 0:
                return []
            if stack_id not in frames_of:
                try:
                    ips = stack_table[stack_table.Key(stack_id)].ip
                except KeyError:
                    ips = []
                addrs = list(itertools.takewhile(bool, ips))  # BCC's walk() assumes 127 frames
                frames_of[stack_id] = [bpf.ksym(a).decode(errors="replace") for a in addrs]
            return frames_of[stack_id]

        raw = [(k.stack_id, k.waiter, k.lock, int(v.flags), int(v.total_ns), int(v.max_ns), int(v.count),
                int(v.behind_ns)) for k, v in _table(prog, "contended").items()]
        mmu_locks = stacks.mmu_lock_addresses((frames(sid), flags, lock) for sid, _, lock, flags, *_ in raw)
        rows = []
        for sid, waiter, lock, flags, total, max_ns, count, behind in raw:
            fr = frames(sid)
            rows.append(ContentionRow(sid, WaiterClass.from_code(waiter), lock, stacks.lock_type(flags),
                                      stacks.caller_of(fr), fr, total, max_ns, count, lock in mmu_locks, behind))
        rows.sort(key=lambda r: -r.total_ns)
        result.contention = rows
        result.aging_sections = "contention.behind_aging" in self.plan.points
        if result.aging_sections:
            state = _table(prog, "aging_state")
            result.notes.append(f"locks.c bracketed {int(state[ctypes.c_int(1)].value)} locked aging requests on "
                                f"this VM's memory ({int(state[ctypes.c_int(0)].value)} still open)")
        h = _table(prog, "wait_hist")
        result.wait_hist = {
            w: hist.log2_buckets([int(h[ctypes.c_int(w.code * NR_SLOTS + s)].value) for s in range(NR_SLOTS)])
            for w in WaiterClass
        }
        self._read_lost(prog, "locks", LocksLost, result)

    def _read_funcs(self, prog: LoadedProgram, result: TraceResult) -> None:
        stats = _table(prog, "stats")
        h = _table(prog, "lat_hist")
        funcs = []
        for symbol, i in self._func_ids.items():
            s = stats[ctypes.c_int(i)]
            buckets = hist.log2_buckets([int(h[ctypes.c_int(i * NR_SLOTS + k)].value) for k in range(NR_SLOTS)])
            funcs.append(FuncLatency(symbol, FuncRole(self.plan.functions[symbol]).name.lower(), int(s.calls),
                                     int(s.nonzero), int(s.ret_sum), int(s.total_ns), int(s.max_ns), buckets))
        result.funcs = funcs
        paths = _table(prog, "path_counts")
        result.paths = {
            outer: {p.label: int(paths[ctypes.c_int(o * len(AgingPath) + p)].value) for p in AgingPath}
            for o, outer in enumerate(("age", "test_age"))
        }
        self._read_lost(prog, "funcs", FuncsLost, result)


    def _read_notifier(self, prog: LoadedProgram, result: TraceResult) -> None:
        stats = _table(prog, "stats")
        nc, npath = len(TaskClass), len(NotifierPath)
        cells = {}
        for op in AgeOp:
            for path in NotifierPath:
                for cls in TaskClass:
                    leaf = stats[ctypes.c_int((op * npath + path) * nc + cls.code)]
                    if leaf.calls:
                        cells[(op, path, cls)] = NotifierCount(int(leaf.calls), int(leaf.pages), int(leaf.young),
                                                               int(leaf.cleared), int(leaf.timed),
                                                               int(leaf.total_ns), int(leaf.max_ns))
        latency = {}
        if "aging.request_latency" in self.plan.points:
            h = _table(prog, "lat_hist")
            for op in AgeOp:
                buckets = hist.log2_buckets([int(h[ctypes.c_int(op * NR_SLOTS + k)].value) for k in range(NR_SLOTS)])
                if any(b.count for b in buckets):
                    latency[op] = buckets
        result.notifier = NotifierCounts(cells, latency)
        self._read_lost(prog, "notifier", NotifierLost, result)


def _fdinfo(fd: int) -> dict[str, int]:
    """The integer fields of /proc/self/fdinfo/<fd> (for a BPF program: run_time_ns, run_cnt, ...)."""
    out = {}
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if value.strip().isdigit():
            out[key.strip()] = int(value.strip())
    return out


def _check_ranges(memslots: list[Memslot], shared: list[tuple[int, int]]) -> None:
    if not memslots:
        raise UsageError("nothing to trace: the VM has no data memslots", "add a memslot before tracing")
    if len(memslots) > MAX_RANGES:
        raise UsageError(f"{len(memslots)} memslots exceed the tracer's {MAX_RANGES}",
                         f"use at most {MAX_RANGES} data memslots")
    if len(shared) > MAX_SHARED:
        raise UsageError(f"{len(shared)} shared address pieces exceed the tracer's {MAX_SHARED}",
                         "merge them before tracing")


def _table(prog: LoadedProgram, name: str):
    try:
        return prog.bpf[name.encode()]
    except KeyError:
        return None


def _nonzero(table) -> dict[int, int]:
    return {int(k.value): int(v.value) for k, v in table.items() if v.value}
