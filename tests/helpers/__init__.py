"""Helpers shared by the test tiers: VMs in cgroups, host-state checks, synthetic reports, the lab.

Imported as ``tests.helpers.<module>``; every test folder is a package, so
pytest puts the repository root on ``sys.path`` and nothing is imported by
bare name.
"""
