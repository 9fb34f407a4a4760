"""`kvmctl lab`: run kvmctl on a chosen kernel in an emulated SVM + NPT machine.

kernel.py     which kernel to boot (stock Debian, a bzImage, a build tree)
prereqs.py    lab_available(): can this host run the lab (QEMU, virtme-ng, busybox), and if not, why
runner.py     the virtme-ng/QEMU command line, output forwarding, timeout cleanup
inside.py     the lab side: kvm_amd, headers for BCC, zram disk/swap, facts
selfcheck.py  the self-check that proves each capability by using it, aging and nested fallback included

The command itself is kvmctl.commands.lab.
"""
