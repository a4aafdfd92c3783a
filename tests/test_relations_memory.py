"""Peak memory of the full WR triple (window=None), measured in a fresh process.

The probe records the resident set just before the measured code (inputs already allocated, kernels
warmed up) and the process's peak resident set (ru_maxrss) just after it; the difference bounds the
extra memory the code needed at any moment. A first test shows the probe reads the dense definition's
(ckd.losses.relations_dense) (B, n, n, d) difference tensor, the kind of intermediate the released code
builds, at its full size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import json, resource, torch
torch.set_num_threads(1)
from ckd.losses.relations import wr_triple

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

# warm-up: page in the kernels the measured code uses
t = [torch.randn(2, 8, 16)]
s = [torch.randn(2, 8, 16, requires_grad=True)]
wr_triple(t, s, torch.ones(2, 8), window=None, chunk_size=3).backward()
h = torch.randn(2, 8, 16)
(h.unsqueeze(1) - h.unsqueeze(2)).sum()

{setup}
before = rss_mb()
{run}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
print(json.dumps({{"before_mb": before, "peak_mb": peak, "extra_mb": peak - before}}))
"""


def peak_extra_mb(setup: str, run: str) -> float:
    if not Path("/proc/self/statm").exists():
        pytest.fail("the memory probe reads /proc/self/statm (Linux)")
    script = "import os\n" + PROBE.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["extra_mb"]


@pytest.mark.slow
def test_probe_sees_the_dense_definitions_difference_tensor():
    # The dense full WR triple of one layer at B=4, n=128, d=768 holds its (B, n, n, d) differences of
    # each centre to every token: 192 MiB of float32. For 7 mapped layers at B=8 that would be 2.6 GiB,
    # over the 2 GB budget the fast engine meets below.
    extra = peak_extra_mb(
        """
        from ckd.losses import relations_dense
        g = torch.Generator().manual_seed(0)
        teacher, student = ([torch.randn(4, 128, 768, generator=g)] for _ in range(2))
        mask = torch.ones(4, 128, dtype=torch.long)
        """,
        "with torch.no_grad():\n    assert relations_dense.wr_triple(teacher, student, mask, window=None) > 0",
    )
    print(f"dense full WR triple, one layer, B=4, n=128, d=768, forward: {extra:.0f} MiB extra")
    assert extra >= 0.95 * 192


@pytest.mark.slow
def test_full_wr_triple_forward_and_backward_stays_under_2gb():
    extra = peak_extra_mb(
        """
        K, B, n, d = 7, 8, 128, 768
        g = torch.Generator().manual_seed(0)
        teacher = [torch.randn(B, n, d, generator=g) for _ in range(K)]
        student = [torch.randn(B, n, d, generator=g).requires_grad_() for _ in range(K)]
        mask = torch.ones(B, n, dtype=torch.long)
        """,
        """
        loss = wr_triple(teacher, student, mask, window=None)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(s.grad).all() for s in student)
        """,
    )
    print(f"full WR triple, K=7, B=8, n=128, d=768, forward+backward: {extra:.0f} MiB extra")
    assert extra < 2000
