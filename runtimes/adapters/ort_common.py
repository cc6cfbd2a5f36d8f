"""What the ONNX Runtime adapters (cpu, cuda, tensorrt) share: session options and the
check that the requested execution provider is really the one running."""

from __future__ import annotations

import contextlib
import re
from typing import Any

from runtimes.adapters.base import Runner
from runtimes.adapters.native import captured_native_output
from runtimes.device import physical_cores
from runtimes.errors import ProviderError, first_line

# "2026-01-01 12:00:00.0 [W:onnxruntime:Default, file.cc:12 fn] message" -> ("W", "message")
_ORT_LOG_LINE = re.compile(r"\[([EW]):onnxruntime:[^\]]*\](.*)")
_ORT_LOG_ERROR = 3  # ORT severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_ORT_LOG_FATAL = 4


def session_options(threads: int | None, spinning: bool, log_severity: int = _ORT_LOG_ERROR) -> Any:
    """SessionOptions chosen for a long-lived, possibly co-resident, inference session."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # All graph rewrites (constant folding, Conv+Relu fusion, NCHWc layouts): the
    # one-off cost (~0.1 s for GoogLeNet) is paid at load and speeds every call.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One thread per physical core: hyper-threads share the FMA units and only add jitter.
    options.intra_op_num_threads = threads or physical_cores()
    # Workers that spin between operators save a wake-up per parallel section (spinning
    # off cost 1.09-1.14x a bare session at batch 1). Spinning that goes on after a run
    # starves every other session in the process (three alternating sessions: 44 ms a
    # call instead of 16), so workers stop spinning as soon as a run returns.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.log_severity_level = log_severity
    return options


def is_ort_log_line(line: str) -> bool:
    """Whether ``line`` is ORT's own: its logger's format, or the Python package's fallback banner."""
    stripped = line.strip()
    return bool(_ORT_LOG_LINE.search(line)) or stripped.startswith(("EP Error", "Falling back to", "*****")) or (
        stripped.startswith("when using [") and stripped.endswith("]")
    )


def ort_failure_lines(log: str) -> str:
    """The error and warning messages of an ORT log, without timestamps, joined into one line."""
    messages = []
    for line in log.splitlines():
        logged = _ORT_LOG_LINE.search(line)
        if logged:
            messages.append(f"{logged[1]}: {logged[2].strip()}")
        elif line.startswith("EP Error"):
            messages.append(line.strip())
    return " | ".join(messages) or " ".join(log.split()) or "nothing"


class OrtRunner(Runner):
    """An ONNX Runtime session; subclasses pick the execution providers in ``_load_impl``."""

    OPTIONS: dict[str, Any] = {"threads": None, "spinning": True}
    REQUIRES = ("onnxruntime", "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)")
    log_severity = _ORT_LOG_ERROR  # what ORT may print while the session is created
    # Only the GPU runners read ORT's log: a provider that fails to load is reported
    # nowhere else. Everyone else's session is created without touching fds 1 and 2.
    reads_ort_log = False
    session: Any = None

    def _create_session(self, providers: list[Any]) -> tuple[Any, str]:
        """A session, plus ORT's own log lines while creating it if this runner reads them."""
        import onnxruntime as ort

        options = session_options(self.options["threads"], self.options["spinning"], self.log_severity)
        capture = captured_native_output(is_ort_log_line) if self.reads_ort_log else contextlib.nullcontext([""])
        with capture as log:
            try:
                session = ort.InferenceSession(str(self.model_path), options, providers=providers)
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
                failure = exc
            else:
                failure = None
        if failure is not None:
            raise ProviderError(f"{self.name}: ONNX Runtime cannot load {self.model_path}: {first_line(failure)}") from None
        # A failing run raises, and Runner.infer turns that into one line: ORT's own
        # coloured log line of the same failure would only repeat it.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = _ORT_LOG_FATAL
        return session, log[0]

    def _infer_impl(self, batch: Any) -> Any:
        return self.session.run([self.spec.output_name], {self.spec.input_name: batch}, self._run_options)[0]

    def _outputs_impl(self, feeds: dict[str, Any], names: list[str]) -> dict[str, Any]:
        return dict(zip(names, self.session.run(names, feeds, self._run_options)))

    def _active_providers_impl(self) -> list[str]:
        return list(self.session.get_providers())

    def _close_impl(self) -> None:
        self.session = None
