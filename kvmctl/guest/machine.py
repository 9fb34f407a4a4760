"""`GuestMachine`: a VM running a payload epoch by epoch, with ground truth.

One persistent thread per vCPU (KVM charges a changed vCPU thread with a
synchronize_rcu, and the tracer attributes events by thread id), driven by
the calling thread:

    with GuestMachine(MachineSpec(mem_bytes=1 << 30, vcpus=2)) as m:
        for e in range(10):
            result = m.run_epoch(Pattern.parse("seq"), write=True)

Between two ``run_epoch`` calls every vCPU is parked in user space (after
its ``out PORT_SYNC``), so the host can age memory with the guest paused.
"""

from __future__ import annotations

import ctypes
import queue
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np

from kvmctl.errors import GuestError, KvmctlError, UnsupportedError, UsageError
from kvmctl.guest import longmode as lm
from kvmctl.guest.mailbox import (
    EXCEPTION_NAMES, MAILBOX_MAGIC, Command, GuestErrorCode, Mailbox, Port,
)  # fmt: skip
from kvmctl.guest.patterns import Pattern, Region, epoch_touched, partition, random_key
from kvmctl.guest.payload import Payload
from kvmctl.kvm import BackingKind, Kvm, Memslot, create_backing, exits
from kvmctl.probe.memory import host_memory_bytes, hugetlb_dir, hugetlb_pool
from kvmctl.units import HUGE_2M, PAGE_SIZE, parse_size

DATA_GPA = 4 << 30  # guest RAM for payload data starts above the 32-bit hole
KICK_SIGNAL = signal.SIGUSR1


@dataclass(frozen=True)
class MachineSpec:
    mem_bytes: int
    vcpus: int = 1
    backing: BackingKind = BackingKind.ANON
    backing_path: str | None = None  # file backing: a given file (one memslot) instead of a temporary one
    memslots: int = 1
    guest_page: int = PAGE_SIZE  # 4 KiB or 2 MiB guest page-table leaves for the data area
    shared: bool = False  # vCPUs touch the whole area instead of a partition
    payload: str = "touch"
    cpl: int = 3
    # Bytes right after the data area that the page tables map but no memslot backs: a guest access
    # there exits with KVM_EXIT_MMIO (the fault tests use it; 0 = none). A multiple of 2 MiB.
    mmio_hole: int = 0

    @classmethod
    def from_shape(cls, mem: str | int, vcpus: int, backing: str, backing_path: str | None, memslots: int,
                   guest_page: str | int, share: bool, payload: str = "touch", cpl: int = 3) -> MachineSpec:
        """From the VM-shape settings as users give them (flags, TOML): sizes as text, the backing by name."""
        return cls(mem_bytes=parse_size(mem, "--mem"), vcpus=int(vcpus), backing=BackingKind.parse(backing),
                   backing_path=backing_path, memslots=int(memslots),
                   guest_page=parse_size(guest_page, "--guest-page"),  # validate() names a bad size
                   shared=bool(share), payload=payload, cpl=cpl)

    def validate(self) -> None:
        align = max(HUGE_2M, self.backing.alignment)
        if self.vcpus < 1:
            raise UsageError(f"--vcpus must be at least 1, got {self.vcpus}", "use --vcpus 1 or more")
        if self.vcpus > lm.MAX_VCPUS:
            raise UsageError(f"{self.vcpus} vCPUs is more than kvmctl supports ({lm.MAX_VCPUS})",
                             f"use at most {lm.MAX_VCPUS} vCPUs")
        if self.memslots < 1:
            raise UsageError(f"--memslots must be at least 1, got {self.memslots}", "use --memslots 1 or more")
        ram = host_memory_bytes()
        if self.mem_bytes > ram:
            # Every payload touches all of it: more than RAM only thrashes or OOMs a shared host.
            raise UsageError(f"--mem {self.mem_bytes >> 20} MiB is more than this host's memory ({ram >> 20} MiB)",
                             "use a smaller --mem")
        if self.mem_bytes % (align * self.memslots):
            raise UsageError(
                f"--mem {self.mem_bytes} bytes cannot be split into {self.memslots} memslot(s) of whole "
                f"{align >> 20} MiB units", f"use a multiple of {align * self.memslots >> 20} MiB")
        if self.backing_path and (self.backing is not BackingKind.FILE or self.memslots != 1):
            raise UsageError("--backing-path needs --backing file and a single memslot",
                             "drop --backing-path or use --backing file --memslots 1")
        if self.guest_page not in (PAGE_SIZE, HUGE_2M):
            raise UsageError(f"guest page size {self.guest_page} is not 4K or 2M", "use --guest-page 4K or 2M")
        if self.cpl not in (0, 3):
            raise UsageError(f"CPL {self.cpl} is not 0 or 3", "use 3 (native) or 0")
        if self.mmio_hole < 0 or self.mmio_hole % HUGE_2M:
            raise UsageError(f"MMIO hole of {self.mmio_hole} bytes is not a multiple of 2 MiB", "use 0 or 2 MiB units")


def check_hugetlb_pool(kind: BackingKind, size: int) -> None:
    """Say how many pages to reserve before a hugetlb mapping fails with a bare ENOMEM."""
    if kind not in (BackingKind.HUGETLB, BackingKind.HUGETLB_1G):
        return
    page = kind.alignment
    reserved, free = hugetlb_pool(page)
    if free * page < size:
        label = "2 MiB" if page == HUGE_2M else "1 GiB"
        pool = "no pages are reserved" if reserved == 0 else f"{reserved} reserved, {free} free"
        raise UnsupportedError(f"{size >> 20} MiB of {label} hugetlb pages needed but {pool}",
                               f"reserve them: echo {size // page} > {hugetlb_dir(page)}/nr_hugepages")


@dataclass
class VcpuEpoch:
    vcpu: int
    touched: int  # touches the guest counted
    tsc_start: int
    tsc_end: int
    guest_seconds: float
    progress_exits: int = 0


@dataclass
class EpochResult:
    epoch: int
    pattern: str
    write: bool
    vcpus: list[VcpuEpoch]
    wall_seconds: float
    start_ns: int  # CLOCK_MONOTONIC
    end_ns: int
    seed: int = 0

    @property
    def touches(self) -> int:
        return sum(v.touched for v in self.vcpus)

    @property
    def guest_seconds(self) -> float:
        """The slowest vCPU's guest-measured time: the epoch's span."""
        return max(v.guest_seconds for v in self.vcpus)


@dataclass
class _Reply:
    vcpu: int
    kind: str  # "sync", "exit", "error"
    error: BaseException | None = None


class _VcpuWorker(threading.Thread):
    """Runs one vCPU until it reaches the next PORT_SYNC (or exits/fails)."""

    def __init__(self, machine: "GuestMachine", index: int):
        super().__init__(name=f"kvmctl-vcpu{index}", daemon=True)
        self.machine = machine
        self.index = index
        self.vcpu = machine.vm.vcpus[index]
        self.inbox: queue.Queue = queue.Queue()
        self.progress_exits = 0

    def run(self) -> None:
        while True:
            if self.inbox.get() is None:
                return
            try:
                kind = self._run_to_sync()
                self.machine._outbox.put(_Reply(self.index, kind))
            except BaseException as err:  # noqa: BLE001 - handed to the controlling thread
                self.machine._outbox.put(_Reply(self.index, "error", err))

    def _run_to_sync(self) -> str:
        vcpu, m = self.vcpu, self.machine
        self.progress_exits = 0
        while True:
            ex = vcpu.run()
            if type(ex) is exits.IoOut:
                if ex.port == Port.SYNC:
                    return "sync"
                if ex.port == Port.PING:
                    m.ping_exits += 1
                    continue
                if ex.port == Port.PROGRESS:
                    self.progress_exits += 1
                    if m.progress_cb:
                        m.progress_cb(self.index, ex.data)
                    continue
                if ex.port == Port.EXIT:
                    return "exit"
                if ex.port == Port.ERROR:
                    raise m.guest_error(self.index, ex.data)
            if type(ex) is exits.Interrupted:
                if m._stopping.is_set():
                    raise KvmctlError("vCPU stopped by the host", None)
                continue
            if type(ex) is exits.Hlt:
                return "hlt"
            raise m.unexpected_exit(self.index, ex)


class GuestMachine:
    """A VM built for one payload: system memslot at GPA 0, data memslots at 4 GiB."""

    def __init__(self, spec: MachineSpec, kvm: Kvm | None = None, epoch_timeout: float | None = None):
        spec.validate()
        self.spec = spec
        self.epoch_timeout = epoch_timeout
        self.payload = Payload.load(spec.payload)
        self._own_kvm = kvm is None
        self.kvm = kvm
        self.vm = None
        self.system = None
        self.backings = []
        self.data_memslots: list[Memslot] = []
        self.workers: list[_VcpuWorker] = []
        self.mailboxes: list[Mailbox] = []
        self._outbox: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self.progress_cb = None
        self.ping_exits = 0
        self.next_epoch = 0
        self.total_pages = spec.mem_bytes // PAGE_SIZE
        self.regions: list[Region] = partition(self.total_pages, spec.vcpus, spec.shared)
        self.tsc_hz = 0
        self.finished = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- construction ------------------------------------------------------
    def _build(self) -> None:
        spec = self.spec
        if self.kvm is None:
            self.kvm = Kvm()
        limit = self.kvm.max_vcpus()
        if spec.vcpus > limit:
            raise UsageError(f"{spec.vcpus} vCPUs exceed this host's KVM limit of {limit}", f"use at most {limit}")
        self.vm = self.kvm.create_vm()
        if spec.memslots + 1 > self.vm.max_memslots:
            raise UsageError(f"{spec.memslots} data memslots exceed KVM's limit of {self.vm.max_memslots - 1}",
                             "use fewer --memslots")
        slot_size = spec.mem_bytes // spec.memslots
        regions = [(DATA_GPA + i * slot_size, slot_size) for i in range(spec.memslots)]
        mapped = regions + ([(self.mmio_gpa, spec.mmio_hole)] if spec.mmio_hole else [])
        layout = lm.SystemLayout.plan(spec.vcpus, mapped, spec.guest_page)
        self.layout = layout
        check_hugetlb_pool(spec.backing, spec.mem_bytes)
        self.system = create_backing(BackingKind.ANON, layout.size)
        self.vm.add_memslot(0, 0, self.system)
        for i, (gpa, size) in enumerate(regions):
            b = create_backing(spec.backing, size, spec.backing_path)
            self.backings.append(b)
            self.data_memslots.append(self.vm.add_memslot(i + 1, gpa, b))
        sysmem = (ctypes.c_char * layout.size).from_address(self.system.hva)
        words = np.frombuffer(sysmem, dtype=np.uint64)
        cr3 = lm.build_page_tables(words, layout.page_tables, [(0, layout.size)] + mapped, spec.guest_page)
        mv = memoryview(sysmem).cast("B")
        gdt_limit = lm.build_gdt(mv, layout)
        idt_limit = lm.build_idt(mv, lm.CODE_GPA + self.payload.stubs_offset)
        image = self.payload.image
        if len(image) > lm.CODE_MAX:
            raise KvmctlError(f"payload {self.payload.name} is {len(image)} bytes, over {lm.CODE_MAX}", None)
        mv[lm.CODE_GPA : lm.CODE_GPA + len(image)] = image
        cpuid = self.kvm.supported_cpuid()
        for i in range(spec.vcpus):
            mb = Mailbox.from_address(self.system.hva + layout.mailbox(i))
            mb.magic = MAILBOX_MAGIC
            self.mailboxes.append(mb)
            lm.build_tss(mv, layout, i, layout.mailbox(i))
            vcpu = self.vm.create_vcpu(i)
            vcpu.set_cpuid(cpuid)
            vcpu.set_sregs(lm.long_mode_sregs(vcpu.get_sregs(), layout, gdt_limit, idt_limit, cr3, i, spec.cpl))
            vcpu.set_regs(lm.entry_regs(lm.CODE_GPA + self.payload.entry_offset, layout.user_stack_top(i),
                                        layout.mailbox(i), spec.cpl))
        del mv, words
        self.tsc_hz = self.vm.vcpus[0].tsc_khz() * 1000
        if threading.current_thread() is threading.main_thread():
            signal.signal(KICK_SIGNAL, lambda *_: None)  # a handled signal makes KVM_RUN return EINTR
        for i in range(spec.vcpus):
            w = _VcpuWorker(self, i)
            w.start()
            self.workers.append(w)

    # --- facts -------------------------------------------------------------
    @property
    def vcpu_thread_ids(self) -> list[int]:
        return [w.native_id for w in self.workers if w.native_id]

    @property
    def mmio_gpa(self) -> int:
        """Start of the MMIO hole (MachineSpec.mmio_hole), right after the data area."""
        return DATA_GPA + self.spec.mem_bytes

    def page_gpa(self, page: int) -> int:
        return DATA_GPA + page * PAGE_SIZE

    def data_view(self, dtype=np.uint8) -> list[np.ndarray]:
        return [b.view(dtype) for b in self.backings]

    def stamps(self) -> np.ndarray:
        """The first qword of every data page: epoch+1 of the last write."""
        return np.concatenate([b.view(np.uint64)[::512] for b in self.backings])

    def vm_stats(self) -> dict:
        return self.vm.stats().read()

    # --- running -----------------------------------------------------------
    def start(self) -> None:
        """Run every vCPU up to its first PORT_SYNC (the payload is ready)."""
        if not getattr(self, "_started", False):
            self._started = True
            self._resume_all("start")

    def run_epoch(self, pattern: Pattern, write: bool = True, seed: int = 0, progress_every: int = 0,
                  epoch: int | None = None) -> EpochResult:
        self.start()
        epoch = self.next_epoch if epoch is None else epoch
        for i, (mb, r) in enumerate(zip(self.mailboxes, self.regions)):
            mb.command = Command.RUN_EPOCH
            mb.epoch = epoch
            mb.pattern = pattern.kind
            mb.write = int(write)
            mb.base = self.page_gpa(r.first_page)
            mb.pages = r.pages
            mb.stride = pattern.stride
            mb.hot_pages = pattern.hot_pages(r.pages)
            mb.cold_every = pattern.cold_every
            mb.shift_every = pattern.shift_every
            mb.key = random_key(seed, i, epoch)
            mb.draws = pattern.draws(r.pages)
            mb.progress_every = progress_every
        start_ns = time.monotonic_ns()
        self._resume_all(f"epoch {epoch}")
        end_ns = time.monotonic_ns()
        self.next_epoch = epoch + 1
        vcpus = [
            VcpuEpoch(i, mb.touched, mb.tsc_start, mb.tsc_end, (mb.tsc_end - mb.tsc_start) / self.tsc_hz,
                      self.workers[i].progress_exits)
            for i, mb in enumerate(self.mailboxes)
        ]
        return EpochResult(epoch, str(pattern), write, vcpus, (end_ns - start_ns) / 1e9, start_ns, end_ns, seed)

    def ground_truth(self, pattern: Pattern, epoch: int, seed: int = 0) -> np.ndarray:
        """Which data pages (all memslots, 4 KiB) the epoch touched."""
        return epoch_touched(pattern, self.regions, self.total_pages, epoch, seed)

    def finish(self) -> None:
        """Tell the payload to exit and wait for it."""
        if self.finished or not getattr(self, "_started", False):
            return
        for mb in self.mailboxes:
            mb.command = Command.EXIT
        self._resume_all("exit", expect="exit")
        self.finished = True

    def run_payload(self, arg0: int = 0, arg1: int = 0) -> None:
        """For single-shot payloads (pingpong, faults): run to PORT_EXIT."""
        for mb in self.mailboxes:
            mb.arg0, mb.arg1 = arg0, arg1
        self._started = True
        self._resume_all("run", expect="exit")
        self.finished = True

    def _resume_all(self, what: str, expect: str = "sync") -> None:
        for w in self.workers:
            w.inbox.put("go")
        deadline = None if self.epoch_timeout is None else time.monotonic() + self.epoch_timeout
        pending = set(range(len(self.workers)))
        first_error = None
        while pending:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                # short waits keep the controlling thread responsive to signals
                reply = self._outbox.get(timeout=0.2 if timeout is None else min(timeout, 0.2))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._watchdog(pending, what)
                continue
            pending.discard(reply.vcpu)
            if reply.kind == "error" and first_error is None:
                first_error = reply.error
                self.kick_all()
            elif reply.kind not in (expect, "error") and first_error is None:
                first_error = GuestError(f"vCPU {reply.vcpu} ended with {reply.kind} during {what}, "
                                         f"expected {expect}", "check the payload",
                                         registers=self.workers[reply.vcpu].vcpu.register_snapshot())
        if first_error:
            raise first_error

    def _watchdog(self, pending: set[int], what: str) -> GuestError:
        """Stop the silent vCPUs, then read their registers: KVM_GET_REGS waits for the
        vCPU mutex that a running KVM_RUN holds, so reading first would hang here too."""
        self.kick_all()
        stopped: set[int] = set()
        give_up = time.monotonic() + 2.0
        while stopped < pending and time.monotonic() < give_up:
            try:
                stopped.add(self._outbox.get(timeout=0.1).vcpu)
            except queue.Empty:
                pass
        regs: dict = {}
        for i in sorted(stopped & pending):
            regs = regs or self.workers[i].vcpu.register_snapshot()
        return GuestError(
            f"guest stopped reporting: no answer from vCPU(s) {sorted(pending)} within "
            f"{self.epoch_timeout:g}s during {what}", "raise --epoch-timeout or check the payload", registers=regs)

    # --- errors ------------------------------------------------------------
    def guest_error(self, index: int, code: int) -> GuestError:
        mb = self.mailboxes[index]
        regs = self.vm.vcpus[index].register_snapshot()
        if code >= GuestErrorCode.FAULT_BASE:
            vec = code - GuestErrorCode.FAULT_BASE
            name = EXCEPTION_NAMES.get(vec, f"exception {vec}")
            regs.update(fault_rip=mb.fault_rip, fault_error=mb.fault_error, fault_cr2=mb.fault_cr2)
            detail = f" at address {mb.fault_cr2:#x}" if vec == 14 else ""
            return GuestError(f"guest vCPU {index} took {name} at rip {mb.fault_rip:#x}{detail}",
                              "a payload bug or an unmapped address", registers=regs)
        if code == GuestErrorCode.NSVM_VMEXIT:
            regs.update(exit_code=mb.fault_vector, exit_info1=mb.fault_error, exit_info2=mb.fault_cr2,
                        l2_rip=mb.fault_rip)
            return GuestError(f"guest vCPU {index}: unexpected #VMEXIT {mb.fault_vector:#x} from the nested guest at "
                              f"L2 rip {mb.fault_rip:#x} (EXITINFO1 {mb.fault_error:#x}, EXITINFO2 {mb.fault_cr2:#x})",
                              "a nested_svm payload bug; the VMCB exit fields are in the registers", registers=regs)
        hints = {
            GuestErrorCode.NSVM_NO_SVM: ("the vCPU has no SVM (CPUID 0x80000001 ECX.SVM)",
                                         "run on an AMD host with nested=1, e.g. inside kvmctl lab"),
            GuestErrorCode.NSVM_NO_NPT: ("the vCPU has no nested paging (CPUID 0x8000000A EDX.NP)",
                                         "load kvm_amd with npt=1 on the host of this VM"),
            GuestErrorCode.NSVM_TOO_SMALL: ("the nested_svm region has 512 pages or fewer",
                                            "give the VM more than 2 MiB of data memory per vCPU"),
        }
        if code in hints:
            msg, hint = hints[GuestErrorCode(code)]
            return GuestError(f"guest vCPU {index}: {msg}", hint, registers=regs)
        what = {GuestErrorCode.BAD_MAGIC: "mailbox magic mismatch", GuestErrorCode.BAD_PATTERN: "unknown pattern"}
        return GuestError(f"guest vCPU {index} reported {what.get(code, f'error {code}')}",
                          "host and payload disagree: rebuild with `make -C guests`", registers=regs)

    def unexpected_exit(self, index: int, ex: exits.Exit) -> GuestError:
        regs = self.vm.vcpus[index].register_snapshot()
        if isinstance(ex, exits.Shutdown):
            msg = "triple fault (KVM_EXIT_SHUTDOWN)"
        elif isinstance(ex, exits.Mmio):
            msg = f"{'write to' if ex.is_write else 'read from'} unbacked guest-physical address {ex.phys_addr:#x}"
        elif isinstance(ex, exits.FailEntry):
            msg = f"VM entry failed, hardware reason {ex.reason:#x}"
        elif isinstance(ex, exits.InternalError):
            msg = f"KVM internal error: {ex.description}"
        else:
            msg = f"unexpected exit {ex}"
        return GuestError(f"guest vCPU {index}: {msg} at rip {regs.get('rip', 0):#x}",
                          "a payload bug; the registers are in the report", registers=regs)

    # --- teardown ----------------------------------------------------------
    def kick_all(self) -> None:
        """Interrupt every vCPU that is inside KVM_RUN.

        The signal only goes out when a handler is installed (by a machine built on
        the main thread): with the default disposition SIGUSR1 would kill the process.
        """
        self._stopping.set()
        handled = signal.getsignal(KICK_SIGNAL) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        for w in self.workers:
            if w.vcpu.fd >= 0:
                w.vcpu.request_exit()
            if handled and w.is_alive() and w.ident:
                try:
                    signal.pthread_kill(w.ident, KICK_SIGNAL)
                except (ProcessLookupError, OSError):
                    pass

    def close(self) -> None:
        if self.workers:
            self.kick_all()
            for w in self.workers:
                w.inbox.put(None)
            for w in self.workers:
                w.join(timeout=5)
            self.workers = []
        self.mailboxes = []
        if self.vm is not None:
            self.vm.close()
            self.vm = None
        for b in self.backings:
            b.close()
        self.backings = []
        if self.system is not None:
            self.system.close()
            self.system = None
        if self._own_kvm and self.kvm is not None:
            self.kvm.close()
            self.kvm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
