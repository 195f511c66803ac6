"""int4 quantization error of real weights on real text: RTN vs GPTQ (group 128 and 64).

    python benchmarks/quant_error.py [--tokens 8192] [--groups 128 64] [--text wiki]

SmolLM2-135M-Instruct layer 0 (attn_q, ffn_gate, ffn_up, whose input is the normalised hidden state), real
inputs X = RMSNorm(token_embd[ids]) * attn_norm from the calibration text; the Hessian comes from the first
half of the tokens and the errors ||X (W - W_hat)^T||_F / ||X W^T||_F and ||W - W_hat||_F / ||W||_F are measured
on the second half. The logic lives in uniql.demo (so that `python -m uniql.demo` runs the same table).
"""
import os

os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")

from uniql.demo import main  # noqa: E402

if __name__ == "__main__":
    main()
