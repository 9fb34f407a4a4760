"""The payload binaries that ship are exactly what guests/ builds today."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from kvmctl.guest.payload import PAYLOADS, Payload

GUESTS = Path(__file__).resolve().parents[2] / "guests"
TOOLS = ("make", "as", "ld", "objcopy")


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory) -> Path:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install make binutils)")
    if not (GUESTS / "Makefile").exists():
        pytest.skip(f"no payload sources at {GUESTS} (installed package without the source tree)")
    out = tmp_path_factory.mktemp("payloads")
    build = subprocess.run(["make", "-C", str(GUESTS), f"OUT={out}", f"BUILD={out}/build"],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"make failed:\n{build.stdout[-2000:]}{build.stderr[-2000:]}"
    return out


@pytest.mark.parametrize("name", PAYLOADS)
def test_shipped_payload_matches_source(rebuilt, name):
    shipped = resources.files("kvmctl.guest").joinpath("bin", f"{name}.bin").read_bytes()
    fresh = (rebuilt / f"{name}.bin").read_bytes()
    assert fresh == shipped, f"kvmctl/guest/bin/{name}.bin is stale: run `make -C guests` and commit the result"


@pytest.mark.parametrize("name", PAYLOADS)
def test_payload_header(name):
    p = Payload.load(name)
    assert 32 <= p.entry_offset < len(p.image)
    assert p.stubs_offset % 16 == 0 and p.stubs_offset + 32 * 16 <= len(p.image)
