"""A VM process for the memcg host test, driven line by line over stdin/stdout.

argv: data size in bytes. Waits for one line (the parent moves it into the
experiment cgroup meanwhile, so every page it maps is charged there), builds a
file-backed GuestMachine and prints "hva fd gpa" of its data memslot. Then:
  epoch PATTERN r|w   run one epoch            -> "done TOUCHES SECONDS"
  spin PATTERN r|w    run epochs until "stop"  -> "spinning" / "stopped after N epochs"
  sync                fdatasync the backing     -> "synced"
  quit                finish the payload        -> "bye"
"""

from __future__ import annotations

import os
import sys
import threading
import time

from kvmctl.guest.machine import GuestMachine, MachineSpec
from kvmctl.guest.patterns import Pattern
from kvmctl.kvm import BackingKind


def main() -> None:
    size = int(sys.argv[1])
    sys.stdin.readline()
    machine = GuestMachine(MachineSpec(mem_bytes=size, vcpus=1, backing=BackingKind.FILE))
    backing = machine.backings[0]
    print(backing.hva, backing.fd, machine.data_memslots[0].gpa, flush=True)
    stop = threading.Event()
    epochs = [0]
    spinner: threading.Thread | None = None

    def spin(pattern: Pattern, write: bool) -> None:
        while not stop.is_set():
            machine.run_epoch(pattern, write=write)
            epochs[0] += 1

    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "epoch":
            r = machine.run_epoch(Pattern.parse(cmd[1]), write=cmd[2] == "w")
            print(f"done {r.touches} {r.wall_seconds:.3f}", flush=True)
        elif cmd[0] == "spin":
            stop.clear()
            epochs[0] = 0
            spinner = threading.Thread(target=spin, args=(Pattern.parse(cmd[1]), cmd[2] == "w"))
            spinner.start()
            while epochs[0] < 2:  # the guest is really running before the parent goes on
                time.sleep(0.001)
            print("spinning", flush=True)
        elif cmd[0] == "stop" and spinner is not None:
            stop.set()
            spinner.join()
            print(f"stopped after {epochs[0]} epochs", flush=True)
        elif cmd[0] == "sync":
            os.fdatasync(backing.fd)
            print("synced", flush=True)
        elif cmd[0] == "quit":
            break
    machine.finish()
    machine.close()
    print("bye", flush=True)


if __name__ == "__main__":
    main()
