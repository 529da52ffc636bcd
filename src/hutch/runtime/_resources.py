"""Kubernetes-style resource quantities (``"500m"``, ``"512Mi"``) parsed and bounded."""

from __future__ import annotations

import os
import re
from decimal import Decimal

_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")
_MEM = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|K|M|G|T|P|k)?$")
_MULT = {
    None: 1,
    "k": 1000,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
}

MIN_MEMORY = 16 * 1024**2
MIN_CPU_MILLIS = 10


class QuantityError(ValueError):
    """A quantity is malformed or out of range; the message says what is accepted."""


def host_cpus() -> int:
    return os.cpu_count() or 1


def host_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def parse_cpu(value: str, *, check_host: bool = True) -> int:
    """CPU quantity to millicores; ``"500m"`` → 500, ``"2"`` → 2000, ``"0.5"`` → 500."""
    m = _CPU.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise QuantityError(f'cpu {value!r} is not a CPU quantity; use e.g. "500m" or "2"')
    # Decimal, not float: a number of 400 digits is a quantity too large, not an OverflowError.
    millis = int(Decimal(m.group(1)) * (1 if m.group(2) else 1000))
    if millis < MIN_CPU_MILLIS:
        raise QuantityError(f"cpu {value!r} is below the minimum of {MIN_CPU_MILLIS}m")
    limit = host_cpus() * 1000
    if check_host and millis > limit:
        raise QuantityError(
            f'cpu {value!r} exceeds this host\'s {host_cpus()} CPUs; ask for at most "{limit}m"'
        )
    return millis


def parse_memory(value: str, *, field: str = "memory", check_host: bool = True) -> int:
    """Memory/storage quantity to bytes; ``"512Mi"`` → 536870912."""
    m = _MEM.match(value.strip()) if isinstance(value, str) else None
    if not m:
        raise QuantityError(f'{field} {value!r} is not a size; use e.g. "512Mi" or "2Gi"')
    size = int(Decimal(m.group(1)) * _MULT[m.group(2)])
    if size < MIN_MEMORY:
        raise QuantityError(f"{field} {value!r} is below the minimum of 16Mi")
    if check_host:
        total = host_memory()
        if total and size > total:
            raise QuantityError(
                f"{field} {value!r} exceeds this host's memory ({total // 1024**2}Mi)"
            )
    return size
