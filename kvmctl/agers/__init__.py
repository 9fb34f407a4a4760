"""Host-side agers: ways to make the host age the experiment VM's memory.

``get_ager(name)`` returns a fresh ager; ``list_agers()`` names them all.
Every ager says whether this host can run it (``availability()``) and undoes
its host changes in ``restore()``, which is also registered with
:mod:`kvmctl.cleanup`.
"""

from __future__ import annotations

import importlib

from kvmctl.agers.base import Ager, AgerContext, Availability, Option, PassRecord
from kvmctl.errors import UsageError

# name -> "module:Class"; modules load on demand.
_REGISTRY: dict[str, str] = {
    "memcg": "kvmctl.agers.memcg:MemcgAger",
    "mglru": "kvmctl.agers.mglru:MglruAger",
    "page_idle": "kvmctl.agers.page_idle:PageIdleAger",
    "damon": "kvmctl.agers.damon:DamonAger",
    "passive": "kvmctl.agers.passive:PassiveAger",
}


def list_agers() -> list[str]:
    return list(_REGISTRY)


def ager_class(name: str) -> type[Ager]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown ager {name!r}", "choose one of: " + ", ".join(_REGISTRY)) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_ager(name: str) -> Ager:
    return ager_class(name)()


__all__ = ["Ager", "AgerContext", "Availability", "Option", "PassRecord", "ager_class", "get_ager", "list_agers"]
