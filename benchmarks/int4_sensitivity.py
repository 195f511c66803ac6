"""Where the int4 loss of SmolLM2 comes from: int4 one tensor class at a time, the rest float32 (and the
converse, int4 everywhere but one class), at rate 0, W4A32, Wikipedia and code perplexity.

    python benchmarks/int4_sensitivity.py FP32_ART INT4_ART [SPEC ...]   # -> $UNIQL_ABLATION_DIR/sensitivity.json
    UNIQL_RATES=0,0.15,0.25,0.35 python benchmarks/int4_sensitivity.py ...   # other rates (default 0)

FP32_ART and INT4_ART are artifacts of the same source, calibration and rotation (``compress(quantize=False)``
and ``compress()``), so their sorted float weights are the same and each int4 tensor of INT4_ART is the GPTQ
form of the matching float32 tensor of FP32_ART. A variant is FP32_ART with the tensors a SPEC selects taken
from INT4_ART: ``only:CLASS`` (that class int4, the rest float32) or ``except:CLASS`` (the converse); CLASS is
``embedding``, ``lm_head``, a projection (``q_proj`` ... ``down_proj``), ``PROJ@A-B`` (a projection of
decoder layers A..B), ``layers:A-B`` (every linear of decoder layers A..B), ``all``, or a union ``a+b``.
The int4 tensors were GPTQ'd on inputs of a fully int4 model, so a
single-class row is a close approximation (not an exact replay) of compressing with only that class in int4.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

DEFAULT_SPECS = (["only:all", "only:none"]
                 + [f"only:{c}" for c in ("embedding", "lm_head", "q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj")]
                 + [f"only:layers:{a}-{a + 4}" for a in range(0, 30, 5)]
                 + [f"except:{c}" for c in ("lm_head", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")])


def selected(name: str, cls: str) -> bool:
    """Whether uniql_tensors entry `name` belongs to class `cls` (``a+b``: the union; ``PROJ@A-B``: that
    projection in decoder layers A..B)."""
    if "+" in cls:
        return any(selected(name, c) for c in cls.split("+"))
    if "@" in cls:
        proj, rng = cls.split("@")
        a, _, b = rng.partition("-")
        return (name.startswith("model.layers.") and name.endswith("." + proj)
                and int(a) <= int(name.split(".")[2]) <= int(b or a))
    if cls == "all":
        return True
    if cls == "none":
        return False
    if cls == "embedding":
        return name == "model.embed_tokens"
    if cls == "lm_head":
        return name == "lm_head"
    if cls.startswith("layers:"):
        a, b = (int(v) for v in cls[len("layers:"):].split("-"))
        return name.startswith("model.layers.") and a <= int(name.split(".")[2]) <= b
    return name.endswith("." + cls)


def make_variant(fp32: Path, int4: Path, spec: str, out: Path) -> Path:
    """FP32 artifact with the int4 tensors of `spec` swapped in, written to `out`."""
    from uniql.formats import safetensors as st

    mode, cls = spec.split(":", 1)
    cfg = json.loads((fp32 / "config.json").read_text())
    qcfg = json.loads((int4 / "config.json").read_text())
    take = {n for n in qcfg["uniql_tensors"] if selected(n, cls) != (mode == "except")}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for p in fp32.iterdir():
        if not p.name.startswith("model-") and p.name != "config.json":
            os.symlink(p.resolve(), out / p.name)
    for f in sorted(fp32.glob("model-*.safetensors")):
        ft = st.load_file(f)
        mine = {n for n in take if n + ".weight" in ft}
        if not mine:
            os.symlink(f.resolve(), out / f.name)
            continue
        qt = st.load_file(int4 / f.name)
        for n in mine:
            del ft[n + ".weight"]
            ft[n + ".qweight"] = qt[n + ".qweight"]
            ft[n + ".scales"] = qt[n + ".scales"]
            cfg["uniql_tensors"][n] = qcfg["uniql_tensors"][n]
        st.save_file(out / f.name, ft)
    cfg["uniql"]["quantization"] = qcfg["uniql"]["quantization"]
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def main(argv: list[str]) -> None:
    from uniql.formats import checkpoint
    from uniql.bench.quality import eval_ids, uniql_rows
    from uniql.demo import ensure_smollm2

    fp32, int4 = Path(argv[0]).expanduser(), Path(argv[1]).expanduser()
    specs = argv[2:] or DEFAULT_SPECS
    res = Path(os.environ.get("UNIQL_ABLATION_DIR", "ablation"))
    res.mkdir(parents=True, exist_ok=True)
    tok = checkpoint.load_tokenizer(ensure_smollm2())
    texts = {t: eval_ids(tok, t, 2048) for t in ("wiki", "code")}
    rates = tuple(float(r) for r in os.environ.get("UNIQL_RATES", "0").split(","))
    tag = f"{int4.name} rates {os.environ.get('UNIQL_RATES', '0')}"
    out_json = res / "sensitivity.json"
    done = json.loads(out_json.read_text()) if out_json.is_file() else {}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / "uniql-sensitivity"
    for spec in specs:
        d = make_variant(fp32, int4, spec, tmp)
        rows = uniql_rows(d, spec, rates, texts, 512, acts=("fp32",))
        key = spec if (rates == (0.0,) and int4.name == "mix-rot-mse-ao-int4") else f"{spec} {tag}"
        done[key] = [r.as_dict() for r in rows] if len(rows) > 1 else rows[0].as_dict()
        out_json.write_text(json.dumps(done, indent=1))
        shutil.rmtree(d)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
