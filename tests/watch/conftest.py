"""Real QEMUs watched by `kvmctl watch`: each test starts its own, in a cgroup below ours, and ends it."""

from __future__ import annotations

from tests.helpers.cgroups import no_cgroup_left_behind, own  # noqa: F401 - fixtures, used by name
