"""Host tests of cgroups and agers: skip with the probe's reason, leave no cgroup behind."""

from tests.helpers.cgroups import no_cgroup_left_behind, own  # noqa: F401 - fixtures, used by name
