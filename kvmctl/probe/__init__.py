"""The host probe: every host fact kvmctl depends on, read in one place."""
