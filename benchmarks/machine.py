"""What machine a benchmark ran on, and how to cap the instruction set of its workers.

Every result file records `cpu_info()`: the CPU model, its family / model / stepping and the
AVX-512, AMX and BF16 flags of /proc/cpuinfo, because the speed ratios depend on them (XLA's matmul
and PyTorch's oneDNN kernels take different paths with and without AVX-512).

`isa_env("avx2")` is the environment that caps both sides at AVX2: XLA_FLAGS=--xla_cpu_max_isa=AVX2
for XLA (JAX); ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2 and MKL_ENABLE_INSTRUCTIONS=AVX2
for PyTorch (ATen's vectorised kernels, oneDNN, and MKL, whose sgemm is what torch's fp32 Linear
runs on x86: without the MKL variable the "capped" torch still ran mkl_blas_avx512_sgemm_kernel_0).
The workers read it at start-up, so it is set in the driver before they are started; `probe`
reports in a fresh process whether each library took it, and `hot_kernels` names the matmul
kernels each one really runs (sampled with `perf` where it is installed).

What the cap cannot reach: XLA's fp32 dots run in YNNPACK, which picks its kernels from the CPU at
run time and ignores --xla_cpu_max_isa (measured on a Sapphire Rapids VM, jax 0.10.2: under the cap
the hottest symbol stays `ynn::dot_fp32_5x64x1_1x16x1_avx512`; no XLA flag of this jaxlib turns it
off). So on an AVX-512 machine the avx2 mode caps PyTorch fully and XLA's generated code (LayerNorm,
GELU, softmax, copies) only; a faithful no-AVX-512 run needs a CPU without AVX-512.
Only the standard library here (any python runs it).
"""

from __future__ import annotations

import os
import platform

ISAS = ("native", "avx2")
# The /proc/cpuinfo flags that decide which kernels XLA and oneDNN pick.
WATCHED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                 "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    """Model name, vendor, family / model / stepping, logical cores, and which of WATCHED_FLAGS
    the first CPU of /proc/cpuinfo has ({} of fields where /proc/cpuinfo cannot be read)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "vendor": fields.get("vendor_id", ""),
        "family": fields.get("cpu family", ""),
        "model_number": fields.get("model", ""),
        "stepping": fields.get("stepping", ""),
        "cores": os.cpu_count(),
        "flags": {flag: flag in flags for flag in WATCHED_FLAGS},
    }


def cpu_line(info: dict) -> str:
    """One line for a markdown report: model, family/model, and the flags it has."""
    have = [flag for flag, on in info["flags"].items() if on]
    return (f"{info['model']} (family {info['family']}, model {info['model_number']}), "
            f"{info['cores']} cores; flags: {', '.join(have) or 'none of the watched'}")


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: every result records them at start and end."""
    return [round(x, 2) for x in os.getloadavg()]


def pin_first_cores(threads: int | None) -> None:
    """Restrict this process to the first `threads` cores of its affinity mask (None or 0: leave
    it). Workers started afterwards inherit the mask, and XLA sizes its thread pool from it."""
    if threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])


def write_report(stem: str, result: dict, markdown) -> None:
    """Write `result` to stem.json and `markdown(result)` to stem.md (making the folder), and print
    the markdown."""
    import json

    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    table = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(table)
    print(table)


def vm(field: str) -> int:
    """A Vm* line of /proc/self/status in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def rss_added(fn) -> int | None:
    """Peak resident memory `fn()` adds, in bytes: free heap returned to the OS, the high-water
    mark reset to the current RSS, then VmHWM after the call minus RSS before. None where
    /proc/self/clear_refs cannot be written."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = vm("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return max(0, vm("VmHWM") - before)


def isa_env(isa: str) -> dict:
    """The environment variables that cap XLA's and PyTorch's instruction set ({} for native)."""
    if isa == "native":
        return {}
    if isa == "avx2":
        return {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_max_isa=AVX2").strip(),
                "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    raise ValueError(f"isa must be one of {ISAS}, got {isa!r}")


def isa_probe(lib: str) -> dict:
    """What `lib` ("torch" or "jax") reports about the instruction set it runs with; call it in
    a fresh process started with the environment under test (`probe` below does that).

    torch: `torch.backends.cpu.get_cpu_capability()` (ATen's kernels: "AVX2" under the cap,
      "AVX512" otherwise on such a CPU) and the ONEDNN_MAX_CPU_ISA it saw.
    jax: compiles a small matmul + tanh with XLA's dump on (--xla_dump_to, added to XLA_FLAGS
      before jax is imported) and reads back the `xla_cpu_max_isa` XLA recorded in its debug
      options (proof that the flag was parsed and taken) and the number of instructions on
      AVX-512 registers (zmm) in the compiled object code (objdump; 0 under the cap, and 0 on
      a CPU without AVX-512 anyway).
    """
    if lib == "torch":
        import torch

        return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "ONEDNN_MAX_CPU_ISA": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", ""),
                "MKL_ENABLE_INSTRUCTIONS": os.environ.get("MKL_ENABLE_INSTRUCTIONS", "")}
    if lib != "jax":
        raise ValueError(f"lib must be 'torch' or 'jax', got {lib!r}")
    import shutil
    import subprocess
    import tempfile

    flags = os.environ.get("XLA_FLAGS", "")
    dump = tempfile.mkdtemp(prefix="isa-probe-")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={dump}".strip()
    try:
        import jax
        import jax.numpy as jnp

        x = jnp.ones((512, 512), jnp.float32)
        jax.jit(lambda a: jnp.tanh(a @ a + 1.0))(x).block_until_ready()
        max_isa, zmm, objects = "", 0, 0
        for name in sorted(os.listdir(dump)):
            path = os.path.join(dump, name)
            if name.endswith(".debug_options"):
                with open(path) as f:
                    for line in f:
                        if line.startswith("xla_cpu_max_isa:"):
                            max_isa = line.split(":", 1)[1].strip().strip('"')
            elif name.endswith(".o") and shutil.which("objdump"):
                objects += 1
                asm = subprocess.run(["objdump", "-d", path], capture_output=True,
                                     text=True).stdout
                zmm += asm.count("%zmm")
        return {"XLA_FLAGS": flags, "jax_backend": jax.default_backend(),
                "xla_cpu_max_isa": max_isa or "(default: the CPU's best)",
                "zmm_instructions": zmm if objects else None, "object_files": objects}
    finally:
        shutil.rmtree(dump, ignore_errors=True)


def probe(python: str, lib: str, env: dict) -> dict:
    """`isa_probe(lib)` in a fresh process of `python` with `env` added to this environment."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([python, os.path.abspath(__file__), lib], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        print(f"isa probe of {lib} failed: {proc.stderr[-500:]}", file=sys.stderr)
        return {"error": proc.stderr[-300:]}
    return json.loads(lines[-1])


# Two seconds or so of bert-base-shaped matmuls ([1024, 768] x [768, 3072]) for `hot_kernels`.
MATMUL_LOOP = {
    "torch": "import torch\na, b = torch.ones(1024, 768), torch.ones(768, 3072)\n"
             "for _ in range(200): torch.mm(a, b)",
    "jax": "import jax, jax.numpy as jnp\nf = jax.jit(lambda a, b: a @ b)\n"
           "a, b = jnp.ones((1024, 768)), jnp.ones((768, 3072))\n"
           "for _ in range(200): f(a, b).block_until_ready()",
}


def hot_kernels(python: str, lib: str, env: dict, top: int = 3) -> list | None:
    """The `top` hottest symbols (with their share of samples, e.g. "78.9% ynn::dot_fp32_...")
    of a fresh process of `python` running `lib`'s matmuls (MATMUL_LOOP) with `env` added, sampled
    by `perf record`; None where perf is missing or not allowed to sample."""
    import shutil
    import subprocess
    import tempfile

    if not shutil.which("perf"):
        return None
    with tempfile.TemporaryDirectory(prefix="hot-kernels-") as tmp:
        data = os.path.join(tmp, "perf.data")
        rec = subprocess.run(["perf", "record", "-q", "-F", "499", "-o", data, "--", python, "-c",
                              MATMUL_LOOP[lib]], capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=600)
        if rec.returncode:
            return None
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children",
                              "--sort", "symbol"], capture_output=True, text=True, timeout=600)
    return parse_perf_report(rep.stdout, top)


def parse_perf_report(text: str, top: int = 3) -> list:
    """"12.3% symbol" for the first `top` sample lines of `perf report --stdio --sort symbol`."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1] in ("[.]", "[k]"):
            symbol = " ".join(parts[2:]).removesuffix(" - -").strip()  # perf's empty columns
            rows.append(f"{parts[0]} {symbol}")
        if len(rows) == top:
            break
    return rows


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(isa_probe(sys.argv[1])))
