"""What CPU the gate runs on and which of the runtime's fast paths it can use.

A Pi 4 (Cortex-A72) has no int8 dot-product instructions, a Pi 5 (Cortex-A76) has them; the
TFLite runtime's XNNPACK delegate picks its int8 kernels by those features. `doctor` prints this
so a slow gate can be told apart from a gate on the wrong kernels.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

# ARM "CPU part" numbers (implementer 0x41) of the cores in Raspberry Pi boards and kin.
ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd49": "Neoverse-N2",
}


@dataclass(frozen=True)
class CpuInfo:
    """The board, the core and the features that matter for the int8 kernels."""

    machine: str  # platform.machine(): aarch64, x86_64
    board: str  # device-tree model ("Raspberry Pi 4 Model B Rev 1.1") or ""
    core: str  # "Cortex-A72", or the x86 model name
    cores: int
    features: tuple[str, ...]

    @property
    def int8_dot(self) -> bool:
        """ARMv8.2 dot product (asimddp): XNNPACK's fastest int8 kernels on a Pi 5."""
        return "asimddp" in self.features

    def summary(self) -> str:
        """One line for `doctor` and for measurement records."""
        what = f"{self.cores} x {self.core or 'unknown core'}"
        if self.machine == "aarch64":
            what += ", int8 dot product " + ("yes (asimddp)" if self.int8_dot else "no (NEON only)")
        return f"{self.board + ': ' if self.board else ''}{what} [{self.machine}]"


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (all cores of a Pi are the same)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def read_cpu(
    cpuinfo: Path = Path("/proc/cpuinfo"), dt_model: Path = Path("/proc/device-tree/model")
) -> CpuInfo:
    """Read the CPU facts from /proc; a missing or odd file gives blanks, never an error."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    info = parse_cpuinfo(text)
    try:
        board = dt_model.read_bytes().rstrip(b"\0\n").decode(errors="replace")
    except OSError:
        board = info.get("Model", "")
    part = info.get("CPU part", "").lower()
    core = ARM_PARTS.get(part, f"ARM part {part}" if part else info.get("model name", ""))
    feats = info.get("Features") or info.get("flags") or ""
    cores = sum(1 for line in text.splitlines() if line.startswith("processor")) or (
        os.cpu_count() or 1
    )
    return CpuInfo(platform.machine(), board, core, cores, tuple(feats.split()))
