"""The rescue: inputs of a batch lost to crashes, classified one at a time in a child process,
so that an input that kills its process costs only itself.

The protocol is framed and checked. The parent writes one JSON header line (the job and
the model's size), then the model's bytes, then one JSON line per input,
``{"i": 3, "name": "..."}``. The child answers ``{"ready": true}`` once the model has
loaded, then ``{"i": 3, "name": "...", "record": "..."}`` per input, flushed. JSON escapes
a newline in a name, so every line is one message, and each reply must name the input
it was sent for. When the child dies, the first input without a reply is the one it
died on: it gets an error row, and a new child goes on with the rest.

    python -m deploy.batch_rescue    (run by deploy.batch; reads stdin, writes stdout)
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

from deploy.batch_classify import Job, JobFailed, Worker

TIMEOUT_S = 120  # per input, in the child


def rescue(names: list[str], job: Job, model: bytes) -> Iterator[tuple[str, str, bool]]:
    """(name, record, crashed) for each of ``names``, in order."""
    queue = list(names)
    while queue:
        header = json.dumps({"job": job.to_json(), "model_size": len(model)}).encode() + b"\n"
        lines = b"".join(json.dumps({"i": i, "name": name}).encode() + b"\n" for i, name in enumerate(queue))
        proc = subprocess.Popen([sys.executable, "-m", "deploy.batch_rescue"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(header + model + lines, timeout=TIMEOUT_S * len(queue) + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:  # interrupted (Ctrl-C, SIGTERM): the child goes too
                proc.kill()
                proc.wait()
        replies = [json.loads(line) for line in out.splitlines() if line.strip()]
        if not replies or replies[0] != {"ready": True}:  # it never loaded the model: no input is to blame
            said = err.decode(errors="replace").strip().splitlines()
            raise JobFailed(f"the rescue process (on this machine, with provider {job.provider}) could not start: "
                            f"{said[-1] if said else 'no output'}")
        answered = 0
        for reply in replies[1:]:
            i, name = reply.get("i"), reply.get("name")
            if i != answered or name != queue[answered]:
                raise JobFailed(f"the rescue process answered input {i} ({name!r}) where input {answered} "
                                f"({queue[answered]!r}) was due; no row was written for either")
            yield name, reply["record"], False
            answered += 1
        if answered == len(queue):
            return
        dead = queue[answered]
        code = proc.returncode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        yield dead, json.dumps({"image": dead, "error": f"the worker process died ({how}) classifying this image, "
                                                        "alone in its own process"}), True
        queue = queue[answered + 1:]


def child_main() -> int:
    """The child: the header, the model's bytes, then one input a line; one reply a line, flushed."""
    stdin, stdout = sys.stdin.buffer, sys.stdout
    header = json.loads(stdin.readline())
    model = stdin.read(header["model_size"])
    worker = Worker(Job.from_json(header["job"]), model, "the rescue process")
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    for line in stdin:
        item = json.loads(line)
        (record,) = worker.classify([item["name"]])
        print(json.dumps({"i": item["i"], "name": item["name"], "record": record}), file=stdout, flush=True)
    worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
