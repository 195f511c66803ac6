"""The issue-19 ablation on SmolLM2-135M: one compress run per option set, each artifact scored at rates
0/15/25/35% (int4: W4A32 and W4A8) on Wikipedia and code (uniql.bench.quality), and head / embedding precision
variants of an int4 artifact.

    python benchmarks/quality_ablation.py run NAME '{"rotate": true, "calibration": "c4"}'   # -> NAME.json
    python benchmarks/quality_ablation.py base                                             # uncompressed
    python benchmarks/quality_ablation.py heads ART head16,head16-emb16                      # precision variants
    python benchmarks/quality_ablation.py requant NAME FP32_ART '{"precision": {...}}'     # quantize_artifact
    python benchmarks/quality_ablation.py score NAME                                      # score q19/NAME
    python benchmarks/quality_ablation.py tie FP32_ART NAME                                # untied -> final mix
    python benchmarks/quality_ablation.py tied8 INT4_ART TIED_FP32_ART NAME [GROUP]        # int8 tied table

Artifacts go to ~/.cache/uniql/models/q19/NAME (reused when present), results to $UNIQL_ABLATION_DIR (default
./ablation). ``calibration`` may name a packaged text ("c4") or a comma-separated mix ("c4,code"); absent: the
default mix. ``requant`` quantizes an existing fp32 artifact with :func:`uniql.quantize_artifact` (keyword
arguments from the JSON; ``seq_len`` defaults to 512 as in compress), which on an untuned artifact does what
``compress(quantize=True)`` does with the same options, without the calibration of the sorting step
(``UNIQL_ABLATION_RATES=0`` / ``UNIQL_ABLATION_ACTS=fp32`` narrow the scoring while exploring;
``UNIQL_ABLATION_WIKI_TOKENS=16384`` scores Wikipedia on 32 windows instead of 4; ``"cal_offset": k`` in the JSON
calibrates on the k-th further sample of the same mix, windows k n .. k n + n - 1, to see how much one calibration
sample alone moves a number). ``tie`` turns a
rotated fp32 artifact of a tied source that was untied (``compress(untie=True)``, or before the final mix existed)
into the one compress writes by default now: the same layer files (linked: sorting never sees the head), the rest
file without ``lm_head.weight`` and with the final mix Q^T diag(g) Q of the source's final norm. ``tied8`` takes
the layer files of a quantized artifact (GPTQ of a layer never sees the head) and the tied table and final mix of
a tied fp32 artifact, and stores the table as round-to-nearest int8 (group GROUP, default 256): what
``quantize_artifact(TIED_FP32_ART, precision={..., "lm_head": "int8-g256"})`` writes, without re-running GPTQ on
the layers. Head variants swap the int4 lm_head (``head16``) and/or embedding (``emb16``) of an artifact for
float16 copies of the same (rotated, final-norm folded) float tensors -- equivalent to compress(precision=...)
for these two tensors: the head is quantized last and feeds nothing, and both calibration streams of compress
start at the float embedding.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np

RATES = (0.0, 0.15, 0.25, 0.35)
TEXTS = ("wiki", "code")


def _dirs() -> tuple[Path, Path, Path]:
    from uniql.demo import ensure_smollm2

    src = ensure_smollm2()
    root = Path.home() / ".cache" / "uniql" / "models" / "q19"
    res = Path(os.environ.get("UNIQL_ABLATION_DIR", "ablation"))
    res.mkdir(parents=True, exist_ok=True)
    return src, root, res


def _texts(src: Path) -> dict[str, np.ndarray]:
    from uniql.formats import checkpoint
    from uniql.bench.quality import eval_ids

    tok = checkpoint.load_tokenizer(src)
    wiki = int(os.environ.get("UNIQL_ABLATION_WIKI_TOKENS", "2048"))
    return {t: eval_ids(tok, t, wiki if t == "wiki" else 2048) for t in TEXTS}


def run(name: str, kw: dict) -> None:
    from uniql import data
    from uniql.bench.quality import uniql_rows
    from uniql.compress.pipeline import compress

    src, root, res = _dirs()
    cal = kw.get("calibration")
    if isinstance(cal, str):
        names = cal.split(",")
        kw["calibration"] = data.read_text(names[0]) if len(names) == 1 else data.calibration_mix(names)
    out = root / name
    if not (out / "uniql_report.json").is_file():
        compress(src, out, overwrite=True, progress=False, **kw)
    rows = uniql_rows(out, name, RATES, _texts(src), 512)
    rep = json.loads((out / "uniql_report.json").read_text())
    (res / f"{name}.json").write_text(json.dumps({"rows": [r.as_dict() for r in rows], "report": {
        k: rep.get(k) for k in ("total_seconds", "peak_rss_mb", "seconds", "bytes")}}, indent=1))


def _env_list(name: str, default: tuple) -> tuple:
    v = os.environ.get(name)
    return default if not v else tuple(type(default[0])(x) for x in v.split(","))


def requant(name: str, fp32: Path, kw: dict) -> None:
    from uniql import data
    from uniql.bench.quality import uniql_rows
    from uniql.compress.requantize import quantize_artifact

    src, root, res = _dirs()
    cal = kw.get("calibration")
    if isinstance(cal, str):
        names = cal.split(",")
        kw["calibration"] = data.read_text(names[0]) if len(names) == 1 else data.calibration_mix(names)
    kw.setdefault("seq_len", 512)
    k = kw.pop("cal_offset", 0)
    if k:  # another sample of the same mix: windows k*n .. k*n + n - 1 of its round robin (n = num_samples)
        from uniql.compress.pipeline import calibration_tokens
        from uniql.formats.checkpoint import load_tokenizer

        n = kw.get("num_samples", 32)
        ids = calibration_tokens(load_tokenizer(fp32), kw.get("calibration"), n * (k + 1), kw["seq_len"])
        if ids.shape[0] != n * (k + 1):
            raise SystemExit(f"the calibration gives {ids.shape[0]} windows, fewer than {n * (k + 1)}")
        kw["calibration"] = ids[n * k:]
    out = root / name
    if not (out / "uniql_report.json").is_file():
        quantize_artifact(fp32, out, overwrite=True, progress=False, **kw)
    rates = _env_list("UNIQL_ABLATION_RATES", RATES)
    acts = _env_list("UNIQL_ABLATION_ACTS", ("fp32", "int8"))
    rows = uniql_rows(out, name, rates, _texts(src), 512, acts=acts)
    rep = json.loads((out / "uniql_report.json").read_text())
    rep = rep if isinstance(rep.get("seconds"), dict) else {}
    disk = sum(p.stat().st_size for p in out.glob("model-*.safetensors"))
    (res / f"{name}.json").write_text(json.dumps({"rows": [r.as_dict() for r in rows], "disk_bytes": disk,
                                                  "report": {k: rep.get(k) for k in ("total_seconds",
                                                                                     "peak_rss_mb", "seconds")}},
                                                 indent=1))


def _linked_copy(art: Path, d: Path) -> None:
    """A fresh directory ``d`` whose layer files (everything but the rest file and config) link to ``art``'s: a
    variant that rewrites only the shared tensors and the config."""
    from uniql.formats.artifact import REST_FILE

    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for p in art.iterdir():
        if p.name not in (REST_FILE, "config.json"):
            os.symlink(p.resolve(), d / p.name)


def tie(art: Path, name: str) -> Path:
    from uniql.formats import checkpoint
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import FORMAT_VERSION, REST_FILE
    from uniql.compress.rotate import Rotation, rotate_shared

    src, root, _ = _dirs()
    cfg = json.loads((art / "config.json").read_text())
    rot_info = cfg["uniql"]["sorting"].get("rotation")
    if not rot_info or not rot_info.get("untied"):
        raise SystemExit("tie needs a rotated artifact of a tied source that was untied")
    shared = checkpoint.read_tensors(src, names=["model.embed_tokens.weight", "model.norm.weight"])
    R = rotate_shared(shared, Rotation(cfg["hidden_size"], rot_info["seed"]), True, keep_tied=True)
    d = root / name
    _linked_copy(art, d)
    rest = dict(st.load_file(art / REST_FILE))
    if rest.pop("lm_head.weight", None) is None:
        raise SystemExit("tie needs an fp32 artifact (a float lm_head.weight)")
    rest["model.norm.mix"] = R["model.norm.mix"]
    st.save_file(d / REST_FILE, rest)
    cfg["tie_word_embeddings"] = True
    cfg.get("uniql_tensors", {}).pop("lm_head", None)
    cfg["uniql"]["format_version"] = FORMAT_VERSION
    rot_info.update(untied=False, final_mix=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def tied8(art: Path, tied_fp32: Path, name: str, group: int = 256) -> Path:
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import FORMAT_VERSION, REST_FILE
    from uniql.compress.steps import f16_scales8
    from uniql.compress.quant import quantize_int8
    from uniql.compress.rotate import mix_f16

    _, root, _ = _dirs()
    cfg = json.loads((art / "config.json").read_text())
    tcfg = json.loads((tied_fp32 / "config.json").read_text())
    if not tcfg["uniql"]["sorting"].get("rotation", {}).get("final_mix"):
        raise SystemExit("tied8 needs a tied fp32 artifact with a final mix (see tie)")
    d = root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for p in art.iterdir():
        if p.name.startswith("model-layer-"):
            os.symlink(p.resolve(), d / p.name)
    for p in tied_fp32.iterdir():
        if p.suffix in (".json", ".jinja") and p.name not in ("config.json", "uniql_report.json"):
            shutil.copy(p, d / p.name)
    frest = st.load_file(tied_fp32 / REST_FILE)
    E = np.ascontiguousarray(frest["model.embed_tokens.weight"], np.float32)
    q = f16_scales8(quantize_int8(E, group))
    st.save_file(d / REST_FILE, {"model.norm.weight": frest["model.norm.weight"],
                                 "model.norm.mix": mix_f16(frest["model.norm.mix"])[0],
                                 "model.embed_tokens.qweight": q.codes,
                                 "model.embed_tokens.scales": q.scales.astype(np.float16)})
    info = cfg["uniql_tensors"]
    info.pop("lm_head", None)
    info["model.embed_tokens"] = {"format": "q8", "shape": list(E.shape), "group": q.group, "segments": 1}
    cfg["tie_word_embeddings"] = True
    cfg["uniql"]["format_version"] = FORMAT_VERSION
    cfg["uniql"]["sorting"]["rotation"].update(untied=False, final_mix=True)
    quant = cfg["uniql"]["quantization"]
    quant["precision"] = dict(quant["precision"], lm_head=f"int8-g{group}")
    quant["embedding"] = "gptq-lm-head (tied)"
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "uniql_report.json").write_text(json.dumps({"tied8": [str(art), str(tied_fp32), group]}))
    return d


def base() -> None:
    from uniql.bench.quality import uniql_rows

    src, _, res = _dirs()
    rows = uniql_rows(src, "base", (0.0,), _texts(src), 512)
    (res / "base.json").write_text(json.dumps({"rows": [r.as_dict() for r in rows]}, indent=1))


def make_variant(art: Path, variant: str) -> Path:
    """A copy of artifact `art` (layer files linked) whose lm_head ("head16" in `variant`) and / or embedding
    ("emb16") are float16 copies of the same rotated float tensors."""
    from uniql.formats import checkpoint
    from uniql.formats import safetensors as st
    from uniql.formats.artifact import REST_FILE
    from uniql.compress.rotate import Rotation, rotate_shared

    src, _, _ = _dirs()
    cfg0 = checkpoint.read_config(src)
    cfg = json.loads((art / "config.json").read_text())
    rot_info = cfg["uniql"]["sorting"].get("rotation")
    if not rot_info:
        raise SystemExit("head variants need a rotated artifact (an untied head)")
    shared = checkpoint.read_tensors(src, names=["model.embed_tokens.weight", "model.norm.weight"])
    R = rotate_shared(shared, Rotation(cfg0["hidden_size"], rot_info["seed"]), rot_info["untied"])
    d = art.with_name(art.name + "-" + variant)
    _linked_copy(art, d)
    rest = dict(st.load_file(art / REST_FILE))
    info = cfg["uniql_tensors"]
    for name, key, flag in (("lm_head", "lm_head.weight", "head16"),
                            ("model.embed_tokens", "model.embed_tokens.weight", "emb16")):
        if flag in variant:
            rest.pop(name + ".qweight", None)
            rest.pop(name + ".scales", None)
            rest[name + ".weight"] = R[key].astype(np.float16)
            info[name] = {"format": "f16", "shape": list(R[key].shape)}
    st.save_file(d / REST_FILE, rest)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def heads(art: Path, variants: list[str]) -> None:
    from uniql.bench.quality import uniql_rows

    src, _, res = _dirs()
    texts = _texts(src)
    out = {}
    for variant in variants:
        d = make_variant(art, variant)
        out[variant] = [r.as_dict() for r in uniql_rows(d, f"{art.name}-{variant}", (0.0,), texts, 512)]
    (res / f"heads-{art.name}.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cmd = sys.argv[1]
    if cmd == "run":
        run(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    elif cmd == "base":
        base()
    elif cmd == "requant":
        requant(sys.argv[2], Path(sys.argv[3]).expanduser(), json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    elif cmd == "tie":
        print(tie(Path(sys.argv[2]).expanduser(), sys.argv[3]))
    elif cmd == "score":  # an artifact already under ~/.cache/uniql/models/q19/NAME
        requant(sys.argv[2], Path("-"), {})
    elif cmd == "tied8":
        print(tied8(Path(sys.argv[2]).expanduser(), Path(sys.argv[3]).expanduser(), sys.argv[4],
                    *(int(a) for a in sys.argv[5:6])))
    elif cmd == "heads":
        heads(Path(sys.argv[2]).expanduser(), sys.argv[3].split(","))
    else:
        raise SystemExit(__doc__)
