"""Which precision a CPU trains fastest in: does it compute bf16 natively?"""
from __future__ import annotations

import torch


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX-BF16). oneDNN also reports bf16 support on
    AVX512 CPUs without them, where it emulates bf16 and autocast runs slower than fp32, so the Linux CPU flags
    decide; elsewhere oneDNN's answer is taken."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # private API moved: no claim of native bf16
        return False
