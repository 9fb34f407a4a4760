"""A VM process for the tracer tests, driven line by line over stdin/stdout.

argv: data size in bytes, backing kind. Waits for one line (the parent moves it
into an experiment cgroup meanwhile, so the pages it faults are charged
there), builds a GuestMachine and prints one line per data memslot:
"slot hva size gpa". Then:
  epoch PATTERN r|w   run one epoch        -> "done TOUCHES"
  spin PATTERN r|w    epochs until "stop"  -> "spinning" / "stopped N"
  stats               VM binary stats      -> "pages_4k=N ..."
  quit                                     -> "bye"
"""

import sys
import threading

from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import BackingKind

size, backing = int(sys.argv[1]), BackingKind(sys.argv[2])
sys.stdin.readline()
m = GuestMachine(MachineSpec(mem_bytes=size, vcpus=1, backing=backing))
m.start()
print(" ".join(f"{s.slot}:{s.hva}:{s.size}:{s.gpa}" for s in m.data_memslots), flush=True)
stop = threading.Event()
spinner = None
count = [0]


def spin(pattern: Pattern, write: bool) -> None:
    while not stop.is_set():
        m.run_epoch(pattern, write=write)
        count[0] += 1


for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "epoch":
        r = m.run_epoch(Pattern.parse(cmd[1]), write=cmd[2] == "w")
        print(f"done {r.touches}", flush=True)
    elif cmd[0] == "spin":
        stop.clear()
        count[0] = 0
        spinner = threading.Thread(target=spin, args=(Pattern.parse(cmd[1]), cmd[2] == "w"))
        spinner.start()
        print("spinning", flush=True)
    elif cmd[0] == "stop":
        stop.set()
        spinner.join()
        print(f"stopped {count[0]}", flush=True)
    elif cmd[0] == "stats":
        stats = m.vm_stats()
        print(" ".join(f"{k}={v}" for k, v in stats.items() if isinstance(v, int)), flush=True)
    elif cmd[0] == "quit":
        break
m.finish()
m.close()
print("bye", flush=True)
