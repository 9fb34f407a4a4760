#!/usr/bin/env bash
# Inside `kvmctl lab --kernel <the --debug tree>`: drive every path of the
# test_clear_young series under lockdep and PROVE_RCU, then count the kernel
# log's lockdep/RCU reports. Untraced, so lockdep sees only the kernel's locking.
#
#   kvmctl lab --kernel TREE+debug --outdir out/review/debug -- \
#       bash scripts/lab-lockdep.sh "$PWD/.venv/bin/python"
#
# Writes cap-on.json, nested-fixed.json, nested-v1.json and dmesg.txt in the
# lab's working directory (--outdir); exits 1 if the log holds a report.
set -u
py=${1:?"give the python of the kvmctl venv, e.g. \$PWD/.venv/bin/python"}
exp=("$py" -m kvmctl experiment --quiet --no-trace --ager mglru --ager-opt test_clear_young=keep --ager-opt evict=1
     --passes 2)
echo 0x000f > /sys/kernel/mm/lru_gen/enabled
"${exp[@]}" --mem 64M --vcpus 2 --access write --mode between -o cap-on.json >/dev/null; echo "cap on: exit $?"
for mode in fixed v1; do
    echo "$mode" > /sys/module/kvm/parameters/test_clear_young_nested
    "${exp[@]}" --nested --mem 32M -o "nested-$mode.json" >/dev/null; echo "nested $mode: exit $?"
done
dmesg > dmesg.txt
grep -E "RCU lockdep checking is enabled|Lock dependency validator" dmesg.txt
reports=$(grep -cE "possible circular|inconsistent lock|suspicious RCU|BUG:|WARNING:|possible recursive|lock held when returning|lockdep is turned off" dmesg.txt)
echo "lockdep/RCU reports in the kernel log: $reports"
[[ $reports -eq 0 ]]
