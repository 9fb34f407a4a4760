"""kvmctl: measure how a Linux host's page aging treats KVM guest memory."""

__version__ = "0.1.0"
