"""BPF tracing of KVM's aging paths: probe catalogue, BCC loader, tracer, records.

Turns kernel events into plain records; never decides what a number means.
Importing this package does not import BCC (only :func:`Tracer.start` does),
so hosts without BCC can still plan and explain.
"""

from kvmctl.trace.catalogue import KernelOffer, TracePlan, kernel_offer, make_plan
from kvmctl.trace.records import TraceResult, TraceTarget
from kvmctl.trace.tracer import Tracer, TracerOptions

__all__ = ["KernelOffer", "TracePlan", "TraceResult", "TraceTarget", "Tracer", "TracerOptions", "kernel_offer",
           "make_plan"]
