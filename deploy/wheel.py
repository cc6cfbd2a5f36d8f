"""A wheel of the toolkit's torch-free part (the ``runtimes`` package), built in-process.

Edge devices install it from the bundle with plain pip: no build backend, no network
for this project's own code, and no torch. The wheel is written by hand (a wheel is a
zip with three metadata files) with fixed timestamps, so the same sources give the same
bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

import runtimes
from deploy.pins import REQUIRES_PYTHON

DISTRIBUTION = "googlenet-deploy-runtime"
# What importing runtimes needs on any device; the runtime itself is chosen per target
# in the bundle's requirements.txt. numpy 1.26 too: JetPack 6's onnxruntime-gpu needs numpy 1.x
# (deploy.pins), and `make test-pythons` runs the runtime on numpy 1.26.4 with OpenCV 4.11.
REQUIRES = ("numpy>=1.26", "opencv-python-headless>=4.10", "pillow>=10")
SUMMARY = "Torch-free runtimes for GoogLeNet models exported by googlenet-deploy."
_EPOCH = (1980, 1, 1, 0, 0, 0)


def wheel_name(version: str = runtimes.__version__) -> str:
    return f"{DISTRIBUTION.replace('-', '_')}-{version}-py3-none-any.whl"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(version: str = runtimes.__version__) -> tuple[str, bytes]:
    """(file name, bytes) of the ``runtimes`` wheel."""
    package = Path(runtimes.__file__).parent
    dist_info = f"{DISTRIBUTION.replace('-', '_')}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(package.rglob("*.py")):
        files[path.relative_to(package.parent).as_posix()] = path.read_bytes()
    files[f"{dist_info}/METADATA"] = "\n".join(
        [
            "Metadata-Version: 2.1",
            f"Name: {DISTRIBUTION}",
            f"Version: {version}",
            f"Summary: {SUMMARY}",
            f"Requires-Python: {REQUIRES_PYTHON}",  # the device Pythons bundles are tested on
            *(f"Requires-Dist: {r}" for r in REQUIRES),
            "",
        ]
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: googlenet-deploy\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return wheel_name(version), buffer.getvalue()
