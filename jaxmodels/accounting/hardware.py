"""Peak FLOP/s of the device a run is on, and MFU against it.

    peak = hardware.peak_flops(jax.devices()[0])        # Peak, or None (with a warning) if unknown
    hardware.mfu(flops_per_step, seconds_per_step, jax.device_count(), peak)

Accelerators: a table of dense bfloat16 peaks (the vendors' figures; NVIDIA's datasheets quote
"with sparsity" numbers, which are twice the dense ones), matched on `device.device_kind`, with
the source of each figure beside it. An unknown kind warns once and gives None: no invented number.

CPU: there is no honest vendor figure for "a CPU running XLA", so the denominator is measured: a
float32 matmul on every local CPU device at once, best of a few repeats, once per machine, cached
in a JSON file keyed by CPU model, core count, JAX version and CPU device count. MFU on CPU is
therefore relative to the measured float32 matmul ceiling of this machine, not a vendor figure
(and bfloat16 is no faster than float32 on these CPUs, so a bfloat16 CPU run is measured against
the same ceiling). The cache lives in $JAXMODELS_CACHE_DIR, else $XDG_CACHE_HOME/jaxmodels, else
~/.cache/jaxmodels; it is read and written only when `peak_flops` is asked about a CPU, never on
import, and an unwritable folder costs a warning, not the run.

All figures are per JAX device: TPU v2 and v3 show each of a chip's two TensorCores as a device,
so their per-chip peak is halved; from v4 on a chip is one device.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import pathlib
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

CACHE_FILE = "matmul_peak.json"
PROBE_SIZE = 1024  # big enough to reach the ceiling on the CPUs measured here, quick on 8 devices
PROBE_REPEATS = 10


@dataclasses.dataclass(frozen=True)
class Peak:
    """Peak FLOP/s of one JAX device, what it is, and where the figure comes from."""

    flops_per_s: float
    name: str
    source: str


@dataclasses.dataclass(frozen=True)
class _Chip:
    """A table row: `kinds` are device_kind strings matched exactly (case-insensitive); `prefix`
    matches a family whose variants share one figure."""

    name: str
    flops_per_chip: float
    source: str
    kinds: tuple[str, ...] = ()
    prefix: str | None = None
    devices_per_chip: int = 1


_GOOGLE = "Google Cloud TPU documentation, 'TPU {}' system architecture page, peak compute per chip (bf16)"
_NVIDIA = "NVIDIA {} datasheet, BF16 Tensor Core {} with sparsity, halved to the dense figure"

CHIPS: tuple[_Chip, ...] = (
    # The v2 page gives no per-chip figure; Google's Cloud TPU announcement gives the board's.
    _Chip("TPU v2", 45e12, "Google's Cloud TPU announcement (Google blog, May 2017): 180 TFLOPS per "
          "4-chip TPU v2 device, 45 per chip", kinds=("TPU v2",), devices_per_chip=2),
    _Chip("TPU v3", 123e12, _GOOGLE.format("v3"), kinds=("TPU v3",), devices_per_chip=2),
    _Chip("TPU v4", 275e12, _GOOGLE.format("v4"), kinds=("TPU v4",)),
    _Chip("TPU v5e", 197e12, _GOOGLE.format("v5e"), kinds=("TPU v5 lite", "TPU v5e")),
    _Chip("TPU v5p", 459e12, _GOOGLE.format("v5p"), kinds=("TPU v5", "TPU v5p")),
    _Chip("TPU v6e (Trillium)", 918e12, _GOOGLE.format("v6e"), kinds=("TPU v6 lite", "TPU v6e")),
    # SXM and PCIe A100s (40 and 80 GB) share the figure: 624 TFLOPS sparse, 312 dense.
    _Chip("NVIDIA A100", 312e12, _NVIDIA.format("A100 Tensor Core GPU", "624 TFLOPS"),
          prefix="NVIDIA A100"),
    # JAX reports the SXM5 part as "NVIDIA H100 80GB HBM3" (HBM3 is SXM only); PCIe is slower.
    _Chip("NVIDIA H100 SXM", 989.5e12, _NVIDIA.format("H100 Tensor Core GPU", "1,979 TFLOPS (SXM)"),
          kinds=("NVIDIA H100 80GB HBM3",)),
    _Chip("NVIDIA H100 PCIe", 756.5e12, _NVIDIA.format("H100 Tensor Core GPU", "1,513 TFLOPS (PCIe)"),
          kinds=("NVIDIA H100 PCIe",)),
    # The H100 SXM's compute with more memory. The H200 NVL (600 W, about 836 dense) may report
    # the same name; it would then be credited about 18 % too much.
    _Chip("NVIDIA H200", 989.5e12, _NVIDIA.format("H200 Tensor Core GPU", "1,979 TFLOPS (SXM)"),
          kinds=("NVIDIA H200",)),
    _Chip("NVIDIA B200", 2.25e15, _NVIDIA.format("HGX B200 (Blackwell)", "4.5 PFLOPS per GPU"),
          kinds=("NVIDIA B200",)),
)


def lookup(device_kind: str) -> Peak | None:
    """The table's peak for a `device.device_kind` string, per JAX device; None if not listed."""
    kind = " ".join(device_kind.split()).casefold()
    for chip in CHIPS:
        if kind in (k.casefold() for k in chip.kinds) or (
                chip.prefix is not None and kind.startswith(chip.prefix.casefold())):
            per_device = chip.flops_per_chip / chip.devices_per_chip
            name = chip.name + (f" (one of {chip.devices_per_chip} TensorCores)" if chip.devices_per_chip > 1 else "")
            return Peak(per_device, f"{name}, dense bf16", chip.source)
    return None


def peak_flops(device=None) -> Peak | None:
    """Peak FLOP/s of one device like `device` (default: the first JAX device).

    CPU: the cached matmul measurement (measured now if this machine has none). Accelerator: the
    table. Anything else: a warning (once per kind) and None.
    """
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        return cpu_peak()
    peak = lookup(device.device_kind)
    if peak is None:
        _warn_unknown(device.platform, device.device_kind)
    return peak


def mfu(flops_per_step: float, seconds_per_step: float, n_devices: int, peak: Peak | None) -> float | None:
    """Achieved FLOP/s over what `n_devices` devices could do at `peak`: a fraction (0.4 = 40 %).

    Pass model FLOPs for MFU and hardware FLOPs (remat included) for HFU. None without a peak.
    """
    if peak is None:
        return None
    if seconds_per_step <= 0 or n_devices <= 0:
        raise ValueError(f"seconds_per_step and n_devices must be positive, got {seconds_per_step}, {n_devices}")
    return flops_per_step / seconds_per_step / (n_devices * peak.flops_per_s)


@functools.lru_cache(maxsize=None)  # the cache is the "once": one warning per unknown kind
def _warn_unknown(platform_name: str, kind: str) -> None:
    warnings.warn(f"no peak FLOP/s known for {platform_name} device {kind!r}: MFU is not reported "
                  f"(add it to jaxmodels.accounting.hardware.CHIPS with its source)", stacklevel=3)


# ---------------------------------------------------------------------------------------------
# CPU: the measured matmul ceiling, cached per machine.


def cache_dir() -> pathlib.Path:
    """$JAXMODELS_CACHE_DIR, else $XDG_CACHE_HOME/jaxmodels, else ~/.cache/jaxmodels (read now)."""
    from jaxmodels import runtime  # one rule for every jaxmodels cache (the XLA one lives there too)

    return runtime.cache_root()


def machine_key() -> dict:
    """What a cached measurement is valid for: CPU model, usable cores, JAX version, CPU devices."""
    return {"cpu": _cpu_model(), "cores": _usable_cores(), "jax": jax.__version__,
            "devices": len(jax.local_devices(backend="cpu"))}


def measure_matmul_flops(size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS, devices=None) -> float:
    """FLOP/s of a float32 [size, size] matmul on every device of `devices` (default: all local
    CPU devices) at once, summed over them: the best of `repeats` timed calls after a warm-up.

    Simulated CPU devices share the same cores, so running them together measures what a step
    that uses all of them can get, not one device's share of an idle machine.
    """
    devices = list(jax.local_devices(backend="cpu") if devices is None else devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
    x = np.random.default_rng(0).standard_normal((len(devices), size, size), dtype=np.float32)
    x = jax.device_put(x, sharding)
    matmul = jax.jit(lambda a: jnp.einsum("bij,bjk->bik", a, a), out_shardings=sharding)
    matmul(x).block_until_ready()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return len(devices) * 2 * size**3 / best


def cpu_peak(*, remeasure: bool = False) -> Peak:
    """The cached CPU measurement for this machine, measuring (and caching) it the first time.

    Other processes on the machine can only slow the probe down, so a measurement taken while the
    cores were busy reads low (and MFU high). `remeasure=True` (or `python
    benchmarks/matmul_peak.py --remeasure`, on a quiet machine) measures again and keeps the
    higher of the two.
    """
    key = machine_key()
    path = cache_dir() / CACHE_FILE
    records = _read_records(path)
    record = next((r for r in records if _is_for(r, key)), None)
    if record is None or remeasure:
        measured = measure_matmul_flops()
        if record is None or measured > record["flops_per_s"]:
            record = {**key, "flops_per_s": measured, "size": PROBE_SIZE,
                      "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            # Other machines' records stay: one cache folder may be shared (a home directory on NFS).
            _write_records(path, [r for r in records if not _is_for(r, key)] + [record])
    per_device = record["flops_per_s"] / key["devices"]
    name = (f"CPU {key['cpu']} ({key['cores']} cores, {key['devices']} JAX device(s)), "
            f"measured float32 matmul")
    source = (f"measured by jaxmodels.accounting.hardware.measure_matmul_flops ({record.get('size')}^2 "
              f"float32 on all {key['devices']} CPU device(s), best of {PROBE_REPEATS}) at "
              f"{record.get('measured')}; cached in {path}")
    return Peak(per_device, name, source)


def _is_for(record: dict, key: dict) -> bool:
    return all(record.get(k) == v for k, v in key.items()) and isinstance(record.get("flops_per_s"), (int, float))


def _read_records(path: pathlib.Path) -> list[dict]:
    try:
        records = json.loads(path.read_text())["records"]
    except (FileNotFoundError, NotADirectoryError):  # nothing cached yet (or no folder to hold it)
        return []
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable matmul-peak cache {path} ({e}): measuring again", stacklevel=3)
        return []
    return [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []


def _write_records(path: pathlib.Path, records: list[dict]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a reader never sees half a file, even with two runs starting at once.
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"records": records}, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the matmul-peak cache {path} ({e}): using this measurement "
                      f"without caching it (set JAXMODELS_CACHE_DIR to a writable folder)", stacklevel=3)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass  # not Linux: fall back to what the platform module knows
    return platform.processor() or platform.machine() or "unknown CPU"


def _usable_cores() -> int:
    # The cores this process may run on (a container or taskset can restrict them), not the host's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
