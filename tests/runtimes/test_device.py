"""What ``runtimes.device`` and the doctor make of a CPU, x86_64 and aarch64 alike.

The /proc/cpuinfo texts are shortened from real machines (two cores each where they have
more): the parsing runs on them unchanged, through the real ``cpu_info`` and
``precision_report``; only the file they read is swapped.
"""

from __future__ import annotations

import pytest

from runtimes import device

PI4_CORE = """BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
PI4 = "".join(f"processor\t: {n}\n{PI4_CORE}\n" for n in range(2)) + """Hardware\t: BCM2835
Revision\t: d03114
Serial\t\t: 100000003a2a0b1f
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

PI5_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
PI5 = f"""processor\t: 0
BogoMIPS\t: 108.00
Features\t: {PI5_FEATURES}
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: c04170
Serial\t\t: 5c0b0f1ea6b5e8a1
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

JETSON_ORIN = """processor\t: 0
model name\t: ARMv8 Processor rev 1 (v8l)
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm paca pacg
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd42
CPU revision\t: 1
"""

RK3588 = """processor\t: 0
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x2
CPU part\t: 0xd05
CPU revision\t: 0

processor\t: 4
BogoMIPS\t: 48.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 0
"""

GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""

QUALCOMM = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x51
CPU architecture: 8
CPU variant\t: 0xa
CPU part\t: 0x801
CPU revision\t: 4
"""

KUNPENG920 = """processor\t: 0
BogoMIPS\t: 200.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma dcpop asimddp asimdfhm
CPU implementer\t: 0x48
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd01
CPU revision\t: 0
"""

XEON = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8
physical id\t: 0
core id\t\t: 0

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8
physical id\t: 0
core id\t\t: 0
"""

OLD_X86 = """processor\t: 0
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu sse sse2 avx avx2 fma
"""


@pytest.fixture
def cpuinfo(monkeypatch):
    """Make ``runtimes.device`` read ``text`` as /proc/cpuinfo."""
    def use(text: str) -> None:
        monkeypatch.setattr(device, "_cpuinfo", lambda: text)
    return use


@pytest.mark.parametrize("text, model, flags", [
    (PI4, "Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)", ["asimd"]),
    (PI5, "Raspberry Pi 5 Model B Rev 1.0 (Cortex-A76)", ["asimd", "asimdhp", "asimddp"]),
    (JETSON_ORIN, "Cortex-A78AE", ["asimd", "asimdhp", "asimddp"]),
    (RK3588, "Cortex-A55 + Cortex-A76", ["asimd", "asimdhp", "asimddp"]),
    (GRAVITON3, "Neoverse-V1", ["asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve"]),
    (QUALCOMM, "implementer 0x51 part 0x801", ["asimd"]),
    (KUNPENG920, "implementer 0x48 part 0xd01", ["asimd", "asimdhp", "asimddp"]),  # HiSilicon's 0xd01 is no Cortex-A32
    (XEON, "Intel(R) Xeon(R) Platinum 8480+", ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]),
], ids=["pi4", "pi5", "jetson-orin", "rk3588", "graviton3", "qualcomm", "kunpeng920", "xeon"])
def test_cpu_info_names_the_cpu_and_its_inference_flags(cpuinfo, text, model, flags):
    """An aarch64 kernel gives no model name (Jetson's "ARMv8 Processor" names no core): the
    board and the cores named from their part numbers stand in for it."""
    cpuinfo(text)
    info = device.cpu_info()
    assert info["model"] == model
    assert info["flags"] == flags


def test_a_cpu_without_physical_ids_counts_the_cores_this_process_may_use(cpuinfo):
    """aarch64 lists no "physical id"/"core id": every allowed CPU is a core. x86's siblings are not."""
    import os

    allowed = len(os.sched_getaffinity(0))
    cpuinfo(PI4)
    assert device.physical_cores() == allowed
    cpuinfo(XEON)  # two hyperthreads of one core
    assert device.physical_cores() == 1


@pytest.mark.parametrize("text, names, lacks, int8", [
    (PI4, ["NEON (asimd)"], "no dotprod, no i8mm", "runs on plain NEON, without dotprod"),
    (PI5, ["NEON (asimd)", "fp16 arithmetic (asimdhp)", "dotprod (asimddp)"], "no i8mm", "fast, dotprod kernels"),
    (GRAVITON3, ["NEON (asimd)", "dotprod (asimddp)", "i8mm (i8mm)", "bf16 (bf16)", "SVE (sve)"], None,
     "fast, i8mm and dotprod kernels"),
], ids=["pi4", "pi5", "graviton3"])
def test_the_doctor_names_neon_dotprod_and_i8mm_on_arm(cpuinfo, text, names, lacks, int8):
    """As it names AVX-512 and AMX on x86; and gives ARM int8 advice, not x86's VNNI warning."""
    from runtimes.doctor import precision_report

    cpuinfo(text)
    lines = precision_report()
    cpu_line = next(line for line in lines if line.startswith("CPU:"))
    assert cpu_line.startswith(f"CPU: {device.cpu_info()['model']}, ")
    for name in names:
        assert name in cpu_line
    assert (f"; {lacks}" in cpu_line) if lacks else ("; no " not in cpu_line)
    runtime_line = next(line for line in lines if line.startswith("cpu "))
    assert f"int8 (QDQ): {int8}" in runtime_line
    assert "VNNI" not in " ".join(lines) and "saturate" not in runtime_line


@pytest.mark.parametrize("text, int8", [
    (XEON, "int8 (QDQ): fast, amx_int8/avx512_vnni"),
    (OLD_X86, "without VNNI uint8 x int8 products can saturate"),
], ids=["xeon", "haswell"])
def test_the_doctor_keeps_x86_advice_on_x86(cpuinfo, text, int8):
    from runtimes.doctor import precision_report

    cpuinfo(text)
    lines = precision_report()
    assert lines[0].startswith(f"CPU: {device.cpu_info()['model']}, ") and "NEON" not in lines[0]
    assert int8 in lines[1]
