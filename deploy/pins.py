"""The device Pythons a bundle supports, and the pins for those older than the build machine's.

A bundle's requirements.txt (``deploy.bundle.requirements``) pins, for ``python_version >= "3.11"``,
the exact versions installed on the build machine: the ones it verified the model with. Those
need Python 3.11 or newer (numpy 2.3+, pillow 13, onnxruntime 1.24+ and onnxruntime-gpu 1.24+
all say ``Requires-Python: >=3.11``), so the lines for ``python_version < "3.11"`` take their
version from the tables below instead. Every number in them was chosen on PyPI as follows
(the full survey, per package, Python and platform, is in issue 27):

``PY310`` (any machine, Python 3.10):
    numpy 2.2.6         newest release whose Requires-Python admits 3.10 (2.3.0 and later: >=3.11);
                        cp310 wheels for manylinux_2_17 x86_64 and aarch64. It satisfies every
                        other pin's numpy requirement: opencv-python-headless 5.x ``numpy>=2``,
                        openvino ``numpy<2.6.0,>=1.16.6``, onnxruntime ``numpy>=1.21.6``.
    pillow 12.3.0       newest release admitting 3.10 (13.0.0: >=3.11); cp310 manylinux_2_28
                        x86_64 and aarch64 wheels. The toolkit itself stays below 13 (pyproject.toml):
                        Pillow's resize is the preprocessing's reference, 13.0 moves pixels by 1-2
                        levels against 12.x, and a bundle's reference answers made with 13.0 failed
                        verify on 3.10 (max |d| 2.5e-2). So every device Python gets this one.
    onnxruntime 1.23.2  newest release with cp310 wheels (1.24 and later: >=3.11); manylinux_2_28
                        x86_64 and aarch64. Its dependencies add coloredlogs, humanfriendly and
                        sympy (1.31 made sympy optional).
    onnxruntime-gpu 1.23.2
                        x86_64 only: the newest with a cp310 wheel, and a CUDA 12 build
                        (onnxruntime-gpu 1.27 and later are CUDA 13 builds). PyPI has no cp310
                        aarch64 onnxruntime-gpu at all: a Jetson's comes from NVIDIA's index.
    opencv-python-headless 5.1.0.95, openvino 2026.4.1
                        the build machine's versions when these were chosen, which have 3.10
                        wheels on both machines (OpenCV's are cp37-abi3 manylinux2014;
                        OpenVINO's are cp310, manylinux_2_28 on x86_64 and manylinux_2_35 on
                        aarch64). A newer build machine's stay for 3.11+ only, until tested here.

``JETPACK6`` (aarch64 with Python 3.10, for the cuda and tensorrt targets: a Jetson on JetPack 6,
Ubuntu 22.04). NVIDIA's JetPack 6 onnxruntime-gpu wheels (pypi.jetson-ai-lab.io/jp6/cu126) are
built against numpy 1.x and fail to import under numpy 2 ("compiled using NumPy 1.x cannot be run
in NumPy 2.x"), yet do not say so in their metadata, so the bundle pins numpy 1.x there itself:
    numpy 1.26.4        the last numpy 1.x (the one NVIDIA's jetson-containers use for CUDA <= 12.6).
    opencv-python-headless 4.11.0.86
                        the newest OpenCV accepting numpy 1.x (4.12.0.88 and later need
                        ``numpy>=2``); cp37-abi3 manylinux2014_aarch64 wheel.

A line whose version is the same for several of these cases is written once, with the marker
of them all (or none), so a bundle built where the installed version equals a pin here gets
one line for that package.

``make test-pythons`` (tests/pythons/check.py) proves these pins: it installs the demo bundle's
requirements.txt into a fresh venv for each CPython 3.10-3.13 on the machine and runs the
bundle there; resolves every requirement set, without installing, for aarch64 and for the
cuda/tensorrt targets; and verifies the JetPack 6 numpy/OpenCV pair (with onnxruntime 1.23.2 on
the CPU provider) on Python 3.10. A number changed here must pass it again.
"""

from __future__ import annotations

# The device Pythons a bundle is made for and tested on: the runtime wheel's Requires-Python.
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
REQUIRES_PYTHON = ">=3.10,<3.14"

# Pythons below this take the tables' versions; from it up, the build machine's.
NEWER = "3.11"

PY310 = {
    "numpy": "2.2.6",
    "opencv-python-headless": "5.1.0.95",
    "pillow": "12.3.0",
    "onnxruntime": "1.23.2",
    "onnxruntime-gpu": "1.23.2",  # x86_64 only (a CUDA 12 build); aarch64's is NVIDIA's
    "openvino": "2026.4.1",
}

JETPACK6 = {
    "numpy": "1.26.4",
    "opencv-python-headless": "4.11.0.86",
}


def device_environment(python: str, machine: str) -> dict[str, str]:
    """The environment-marker values of a Linux CPython ``python`` ("3.10") on ``machine`` ("aarch64"):
    what pip evaluates requirements.txt's markers against on that device. For checks made here
    (pip itself evaluates them against the Python running it, whatever --python-version says)."""
    from packaging.markers import default_environment  # pip's own; the checks that call this have it

    env = default_environment()
    env.update(python_version=python, python_full_version=f"{python}.0", platform_machine=machine,
               sys_platform="linux", platform_system="Linux", os_name="posix", implementation_name="cpython",
               platform_python_implementation="CPython")
    return env
