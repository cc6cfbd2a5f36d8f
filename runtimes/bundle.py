"""Reading a deployment bundle on the device: checked files, the model per precision,
the provider preference, the reference answers.

A bundle is a folder (or that folder as ``.tar.gz``) written by ``python -m deploy.bundle``
with a ``bundle.json`` that lists the sha256 of every file. Opening one checks them all:
a file that changed in transfer is refused by name before anything runs it.

A bundle is closed: every path bundle.json names (models, reference, labels, the wheels
requirements.txt installs) must be one of those hashed files, inside the folder (no
``..``, no absolute path, no link to elsewhere), and each model's precision and spec there
must be the model's own. Since bundle.json itself cannot be hashed, this is what keeps an
edited one from running, or judging by a looser tolerance, a model from outside the bundle.

A ``.tar.gz`` bundle is opened with limits and cached by ``runtimes.tarball``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runtimes import __version__
from runtimes.errors import BundleError, ModelSpecError
from runtimes.spec import ModelSpec

MANIFEST = "bundle.json"
# Bumped when a reader of the previous format would misread a new bundle.
FORMAT = 1

# For each target, the providers to try in order: the target's own, then one that the
# same requirements also install (the CPU provider ships in onnxruntime-gpu; OpenCV DNN
# comes with the preprocessing's OpenCV everywhere).
PROVIDERS = {
    "cpu": ("cpu", "opencv"),
    "cuda": ("cuda", "cpu"),
    "tensorrt": ("tensorrt", "cuda", "cpu"),
    "openvino": ("openvino", "opencv"),
    "opencv": ("opencv",),
}


def providers_for(targets: list[str]) -> list[str]:
    """The targets' own providers in the order given, then the fallbacks their requirements also install."""
    return list(dict.fromkeys([*targets, *(p for t in targets for p in PROVIDERS[t])]))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleModel:
    precision: str
    path: Path
    spec: ModelSpec


@dataclass(frozen=True)
class Bundle:
    root: Path
    target: str
    providers: tuple[str, ...]
    models: dict[str, BundleModel]  # precision -> model, the default first
    reference: Path
    made_by: str  # the toolkit version that wrote it

    @property
    def default_precision(self) -> str:
        return next(iter(self.models))

    def model(self, precision: str | None = None) -> BundleModel:
        """The model for ``precision`` (default: the bundle's default)."""
        precision = precision or self.default_precision
        if precision not in self.models:
            raise BundleError(
                f"bundle {self.root} has no {precision} model; it has: {', '.join(self.models)}"
            )
        return self.models[precision]


@contextlib.contextmanager
def open_bundle(path: str | Path) -> Iterator[Bundle]:
    """The checked bundle at ``path``, a folder or a ``.tar.gz`` (its cached extraction; where
    the cache cannot be written, a temp folder for the block)."""
    path = Path(path)
    if not (path.is_file() and path.name.endswith((".tar.gz", ".tgz"))):
        yield read_bundle(path)
        return
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(open(path, "rb"))  # one handle: the bytes hashed are the bytes unpacked
        except OSError as exc:
            raise BundleError(f"cannot read bundle {path}: {exc.strerror or exc}") from None
        from runtimes import tarball  # only .tar.gz bundles need it: keeps `runtimes.run` start-up lean

        bundle = tarball.open_cached(path, fh)
        if bundle is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="googlenet-bundle-")))
            try:
                top = tarball.unpack(path, fh, tmp)
            except OSError as exc:
                raise BundleError(f"bundle {path}: cannot unpack it into {tmp} ({exc})") from None
            bundle = read_bundle(top)
        fh.close()
        yield bundle


def read_bundle(root: str | Path) -> Bundle:
    """Read and check the bundle folder ``root``; a BundleError says what is wrong and what to do."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        what = "does not exist" if not root.exists() else f"has no {MANIFEST}"
        raise BundleError(f"bundle {root} {what}; make one with `python -m deploy.bundle --model M --out {root}`")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        fmt, made_by = manifest["format"], str(manifest.get("toolkit", "?"))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST} is not a bundle manifest ({exc}); copy the bundle again") from None
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise BundleError(
            f"bundle {root} was made by googlenet-deploy {made_by} (bundle format {fmt}); this runtime is "
            f"{__version__} and reads format {FORMAT}: install the bundle's own runtime with "
            f"`pip install -r {root / 'requirements.txt'}` (from inside the bundle)"
        )
    try:
        files = manifest["files"]
        _check_files(root, files)
        target = manifest["target"]
        models = _read_models(root, manifest["models"], files)
        if "labels" in manifest:
            _listed(root, manifest["labels"], files, "the labels")
        _check_requirements(root, files)
        return Bundle(
            root=root,
            target=target,
            providers=tuple(manifest.get("providers") or providers_for(target.split(","))),
            models=models,
            reference=_listed(root, manifest["reference"], files, "the reference"),
            made_by=made_by,
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST} lacks {exc} or has it malformed; copy the bundle again") from None
    except ModelSpecError as exc:
        raise BundleError(f"bundle {root}: {exc}") from None


def _check_files(root: Path, files: dict[str, str]) -> None:
    inside = root.resolve()
    for name, expected in sorted(files.items()):
        path = root / safe_relative(name, root)
        if not path.resolve().is_relative_to(inside):  # a link (or a linked folder) to elsewhere
            raise BundleError(f"bundle {root}: {name} links to {path.resolve()}, outside the bundle; refusing it")
        if not path.is_file():
            raise BundleError(f"bundle {root}: {name} is missing; copy the whole bundle again")
        if sha256_file(path) != expected:
            raise BundleError(
                f"bundle {root}: {name} does not match its sha256 in {MANIFEST} (changed or damaged since it was "
                "bundled); refusing to run it: copy the bundle again"
            )


def _listed(root: Path, name: str, files: dict[str, str], what: str) -> Path:
    """``root / name`` for a file that bundle.json names: only one of the files checked above,
    so what runs is what was hashed, inside the bundle."""
    rel = safe_relative(name, root)
    if name not in files:
        raise BundleError(f"bundle {root}: {what} {name!r} is not among the hashed files in {MANIFEST}; refusing it")
    return root / rel


def _read_models(root: Path, entries: list[dict], files: dict[str, str]) -> dict[str, BundleModel]:
    """precision -> model, in the manifest's order; each spec must be the one inside its file."""
    models: dict[str, BundleModel] = {}
    for entry in entries:
        precision, name = entry["precision"], entry["file"]
        path = _listed(root, name, files, "the model")
        spec = ModelSpec.from_json(json.dumps(entry["spec"]), name)
        _check_spec(root, name, precision, spec, ModelSpec.from_onnx(path))
        if precision in models:
            raise BundleError(f"bundle {root}: {MANIFEST} lists two {precision} models; refusing it")
        models[precision] = BundleModel(precision, path, spec)
    return models


def _check_spec(root: Path, name: str, precision: str, listed: ModelSpec, inside: ModelSpec) -> None:
    """The manifest's precision and spec for a model must be the model's own: verify picks its
    tolerance by precision, and the runtimes preprocess by the spec."""
    if listed.precision != precision or inside.precision != precision:
        raise BundleError(
            f"bundle {root}: {MANIFEST} lists {name} as {precision}; its spec there says {listed.precision}, "
            f"the model itself {inside.precision}; refusing it"
        )
    if listed != inside:
        differ = [f.name for f in dataclasses.fields(ModelSpec) if getattr(listed, f.name) != getattr(inside, f.name)]
        raise BundleError(
            f"bundle {root}: the spec of {name} in {MANIFEST} differs from the one inside the model "
            f"({', '.join(differ)}); refusing it"
        )


def _check_requirements(root: Path, files: dict[str, str]) -> None:
    """What requirements.txt installs from a path must be one of the bundle's hashed files (pip
    runs a wheel's code); any other option or address is refused."""
    if "requirements.txt" not in files:
        return
    for line in (root / "requirements.txt").read_text(encoding="utf-8").splitlines():
        requirement = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].split(";", 1)[0].strip()
        if requirement.startswith("-"):
            raise BundleError(f"bundle {root}: requirements.txt has the option {requirement!r}; refusing it")
        if "/" in requirement or "\\" in requirement:
            _listed(root, requirement.removeprefix("./"), files, "the requirements.txt line")


def safe_relative(name: str, where: Path) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in name:
        raise BundleError(f"bundle {where}: refusing the path {name!r}, which leaves the bundle")
    return rel
