"""Same inputs and seed -> byte-identical artifact, whatever the thread counts.

compress() runs in fresh subprocesses on one tiny random Llama (transformers ``save_pretrained``) with
OMP_NUM_THREADS in {1, 2} x OPENBLAS_NUM_THREADS in {1, 2}; the artifact's model-*.safetensors and config.json are
compared byte for byte with the single-threaded run (uniql_report.json holds timings and is not compared).

Our own OpenMP kernels are thread-count invariant (each output element is
reduced by one thread in a fixed order), and a run repeats itself exactly at fixed thread counts, but OpenBLAS
(pthreads build, 0.3.21 here) gives LAPACK results whose last bits depend on OPENBLAS_NUM_THREADS: dsyevd
(uq_linalg_eigh -> uq_linalg_sqrtm, the G^{1/2} / G^{-1/2} of the quantization-aware SVD) from n = 32 on, dpotrf
(Cholesky: uq_linalg_cholesky, spd_inv_diag, GPTQ) from n = 64, dgesdd from n = 128. In compress() the first
differing value is qasvd_vo's V weight of layer 0 (a few elements at ~1e-8 relative); int4 rounding hides it in
layer 0's file, but it reaches the attention output that o_proj's GPTQ Hessian is built from, hence o_proj's
float32 scales, hence the activations propagated to layer 1, whose codes/scales, block importance (config.json)
and the lm_head then differ. The model needs a hidden size of at least ~256 for this to survive rounding.
Fixed in csrc/linalg/lapack_serial.h: every LAPACK call runs with OpenBLAS pinned to one thread (BLAS level 3,
dgemm/dsyrk, keeps its threads and is thread-count invariant).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, SEQ, NSAMP = 256, 64, 8
TIMEOUT_S = 300
COMPARED = ["config.json", "model-layer-0000.safetensors", "model-layer-0001.safetensors", "model-rest.safetensors"]

_SCRIPT = """
import sys, numpy as np
from uniql.compress.pipeline import compress
compress(sys.argv[1], sys.argv[2], calibration=np.random.default_rng(0).integers(0, {vocab}, size=({n}, {s})),
         num_samples={n}, seq_len={s}, quantize=True, group=64, progress=False)
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                   max_position_embeddings=128)
    d = tmp_path_factory.mktemp("det") / "llama"
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def artifacts(source, tmp_path_factory):
    cache: dict[tuple[int, int, int], Path] = {}
    root = tmp_path_factory.mktemp("det-out")

    def get(omp: int, blas: int, rep: int = 0) -> Path:
        key = (omp, blas, rep)
        if key not in cache:
            out = root / f"omp{omp}-blas{blas}-{rep}"
            env = dict(os.environ, OMP_NUM_THREADS=str(omp), OPENBLAS_NUM_THREADS=str(blas))
            code = _SCRIPT.format(vocab=VOCAB, n=NSAMP, s=SEQ)
            p = subprocess.run([sys.executable, "-c", code, str(source), str(out)], env=env, capture_output=True,
                               text=True, timeout=TIMEOUT_S)
            assert p.returncode == 0, p.stderr[-3000:]
            cache[key] = out
        return cache[key]

    return get


def _differing(a: Path, b: Path) -> list[str]:
    return [n for n in COMPARED if (a / n).read_bytes() != (b / n).read_bytes()]


def test_repeat_run_is_identical(artifacts):
    assert _differing(artifacts(1, 1), artifacts(1, 1, rep=1)) == []


def test_omp_threads_do_not_change_the_artifact(artifacts):
    assert _differing(artifacts(1, 1), artifacts(2, 1)) == []


needs_two_cpus = pytest.mark.skipif((os.cpu_count() or 1) < 2,
                                    reason="OpenBLAS caps its threads at the CPU count: 2 threads need 2 CPUs")


@needs_two_cpus
@pytest.mark.parametrize("omp", [1, 2])
def test_openblas_threads_do_not_change_the_artifact(artifacts, omp):
    assert _differing(artifacts(1, 1), artifacts(omp, 2)) == []
