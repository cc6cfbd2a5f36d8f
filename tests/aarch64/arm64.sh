#!/usr/bin/env bash
# An arm64 Debian userland run under qemu-user on an x86_64 machine, for `make test-aarch64`.
# Test infrastructure, not product code: every workaround for the emulator is here, with its reason.
#
#   arm64.sh userland DIR           make DIR/rootfs, Debian bookworm arm64 with Python 3.11 (kept: a
#                                   second call reuses it)
#   arm64.sh python DIR CPU ARGS... run that Python on the emulated CPU: cortex-a72 (Raspberry Pi 4)
#                                   or cortex-a76 (Raspberry Pi 5; close to Jetson Orin's A78AE)
set -euo pipefail

userland() {
    local dir=$1 rootfs=$1/rootfs
    if [[ -x $rootfs/usr/bin/python3.11 ]]; then
        echo "arm64 userland: reused $rootfs"
        return
    fi
    # CI machines start without the emulator and debootstrap: Debian's packages, installed here.
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
        local sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
        echo "arm64 userland: installing qemu-user-static and debootstrap with apt"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user-static debootstrap >/dev/null
    fi
    echo "arm64 userland: debootstrap bookworm arm64 (minbase and python3) into $rootfs"
    rm -rf "$rootfs.partial"
    mkdir -p "$dir"
    # --foreign only downloads and unpacks the essential packages: the second stage would have to
    # run arm64 binaries (dpkg, maintainer scripts) in a chroot, which needs binfmt_misc, which this
    # script does not register. The other packages wait in the apt cache, unpacked below.
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
        bookworm "$rootfs.partial" http://deb.debian.org/debian >"$dir/debootstrap.log" 2>&1 \
        || { tail -5 "$dir/debootstrap.log"; exit 1; }
    # Unpacked without their maintainer scripts: Python needs none of them to run.
    for deb in "$rootfs.partial"/var/cache/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$rootfs.partial"
    done
    rm -f "$rootfs.partial"/var/cache/apt/archives/*.deb
    mv "$rootfs.partial" "$rootfs"  # whole or absent: an interrupted build is not reused
    echo "arm64 userland: $(du -sh "$rootfs" | cut -f1) in $rootfs"
}

# The Features names of the kernel's arm64 HWCAP and HWCAP2 bits, in bit order
# (arch/arm64/include/uapi/asm/hwcap.h).
HWCAP=(fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc
       dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg)
HWCAP2=(dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm
        svebf16 i8mm bf16 dgh rng bti)
declare -A PART=([cortex-a72]=0xd08 [cortex-a76]=0xd0b)
declare -A MIDR=([cortex-a72]=0x00000000410fd083 [cortex-a76]=0x00000000414fd0b1)  # r0p3 and r4p1

run_python() {
    local dir=$1 cpu=$2 rootfs=$1/rootfs
    shift 2
    [[ -n ${PART[$cpu]:-} ]] || { echo "arm64.sh: unknown CPU $cpu; known: ${!PART[*]}" >&2; exit 2; }
    # The default CPU, "max", advertises SVE and SME, and ONNX Runtime's kernels for them are far
    # slower under emulation (a whole verify did not end in 43 minutes): name a real core.
    export QEMU_CPU=$cpu
    # qemu-user 7.2 passes the host's x86 /proc/cpuinfo through, and the cpuinfo library inside
    # onnxruntime finds no "CPU implementer" line there and dereferences NULL: `import onnxruntime`
    # segfaults. -L makes the emulated program look up absolute paths under the rootfs first, so a
    # /proc/cpuinfo written there is the one it reads: an arm64 kernel's, one entry per core this
    # process may use, listing the features the emulated core really has (its HWCAP, read under it).
    local caps
    caps=$(qemu-aarch64-static -L "$rootfs" "$rootfs/usr/bin/python3.11" -c \
        'import ctypes; c = ctypes.CDLL(None); c.getauxval.restype = ctypes.c_ulong; print(c.getauxval(16), c.getauxval(26))')
    local -a bits=($caps) features=()
    for i in "${!HWCAP[@]}"; do if (( bits[0] >> i & 1 )); then features+=("${HWCAP[$i]}"); fi; done
    for i in "${!HWCAP2[@]}"; do if (( bits[1] >> i & 1 )); then features+=("${HWCAP2[$i]}"); fi; done
    mkdir -p "$rootfs/proc"
    local n=0 cores
    cores=$(nproc)
    {
        while (( n < cores )); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$n" "${features[*]}"
            printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: %s\nCPU revision\t: 0\n\n' "${PART[$cpu]}"
            n=$((n + 1))
        done
    } >"$rootfs/proc/cpuinfo"
    # OpenVINO's ARM plugin names the core from sysfs, and says "Can't open MIDR_EL1" without it.
    for ((n = 0; n < cores; n++)); do
        mkdir -p "$rootfs/sys/devices/system/cpu/cpu$n/regs/identification"
        echo "${MIDR[$cpu]}" >"$rootfs/sys/devices/system/cpu/cpu$n/regs/identification/midr_el1"
    done
    # Without binfmt_misc a child arm64 interpreter cannot start (Exec format error): what re-runs
    # sys.executable (runtimes.bench's cold start, runtimes.tune's confirmation) cannot run here.
    exec qemu-aarch64-static -L "$rootfs" "$rootfs/usr/bin/python3.11" "$@"
}

case ${1:-} in
    userland) userland "$2" ;;
    python) shift; run_python "$@" ;;
    *) echo "usage: arm64.sh userland DIR | arm64.sh python DIR CPU ARGS..." >&2; exit 2 ;;
esac
