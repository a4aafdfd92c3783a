"""`python -m benchmarks.probe '<json spec>'`: one peak-memory measurement in a fresh process, so that
nothing measured before can hide in the resident set (see benchmarks.measure.probe)."""

from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(int(spec["threads"]))
    from benchmarks.__main__ import quiet_transformers

    quiet_transformers()
    if spec["kind"] == "term":
        from benchmarks.terms import probe_term as body
    else:
        from benchmarks.steps import probe_step as body
    print(json.dumps(body(spec)))


if __name__ == "__main__":
    main()
