"""Memory facts of the host: hugetlb pools."""

from __future__ import annotations

from pathlib import Path

HUGEPAGES = Path("/sys/kernel/mm/hugepages")


def hugetlb_dir(page_size: int, root: Path = HUGEPAGES) -> Path:
    return root / f"hugepages-{page_size // 1024}kB"


def hugetlb_pool(page_size: int, root: Path = HUGEPAGES) -> tuple[int, int]:
    """(reserved, free) hugetlb pages of ``page_size``, read now (the pool changes); (0, 0) if unknown."""
    d = hugetlb_dir(page_size, root)

    def counter(name: str) -> int:
        try:
            return int((d / name).read_text())
        except (OSError, ValueError):
            return 0

    return counter("nr_hugepages"), counter("free_hugepages")
