"""uniql as an lm-eval-harness model (``pip install uniql[lmeval]``; tested with lm-eval 0.4.13):

    lm_eval --model uniql --model_args artifact=PATH,rate=0.15 --tasks piqa,arc_easy
    python -m uniql.eval.lmeval --model uniql ...      (the same command line, without the startup hook)

Every request is served by the C runtime through :class:`uniql.eval.scoring.Scorer`: ``loglikelihood`` (sum of the
continuation's log-probabilities and whether it is the greedy continuation; lm-eval's tokenization of
(context, continuation) pairs, from its ``TemplateLM``), ``loglikelihood_rolling`` (lm-eval's own disjoint rolling
windows of ``max_length`` tokens) and ``generate_until`` (greedy, or temperature sampling with ``do_sample``; stop
strings, ``max_gen_toks``). Log-likelihood requests are scored in lexicographic token order, so requests that
share a prefix (the choices of a document, few-shot headers) reuse the KV cache; answers come back in lm-eval's
order. The same requests through :func:`uniql.eval.evaluate` give the same numbers.

model_args: ``artifact`` (or ``pretrained``): a uniql artifact or Hugging Face checkpoint directory; ``rate``
(0): pruning rate (artifacts only); ``max_length``: KV-cache length (default the runtime's, min(max positions,
2048)); ``int4_activations``: auto | fp32 | int8 and ``threads``: kernel threads (both process-wide; on a
busy machine threads=1 avoids threads waiting for each other). lm-eval's ``batch_size``/``device`` are accepted
and ignored (one CPU sequence at a time).

Registration: importing this module registers the name ``uniql`` in lm-eval's model registry
(``lm_eval.api.registry.register_model``). lm-eval 0.4.x has no plugin discovery, so for the plain ``lm_eval``
command an installed uniql ships ``uniql_lmeval.pth`` (one line, run by Python's ``site`` at startup) that imports
the tiny module ``_uniql_lmeval_hook``: it waits, at no cost, for ``lm_eval.models`` to be imported and then
registers ``uniql`` as a lazy entry pointing here -- uniql itself is imported only when the model is asked for.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lm_eval.models  # noqa: F401  (lm-eval's own lazy entries first: get_model imports them only into an empty registry)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

import uniql
from uniql.errors import FormatError, InvalidArgumentError
from uniql.eval.scoring import Scorer, encode

log = logging.getLogger(__name__)

__all__ = ["UniqlLM", "check_tasks", "run", "main"]

_IGNORED = ("batch_size", "max_batch_size", "device", "dtype", "trust_remote_code")


@register_model("uniql")
class UniqlLM(TemplateLM):
    backend = "causal"

    def __init__(self, artifact: str | None = None, pretrained: str | None = None, rate: float = 0.0,
                 max_length: int | None = None, int4_activations: str | None = None, threads: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(k for k in kwargs if k not in _IGNORED)
        if unknown:
            raise InvalidArgumentError(f"unknown model_args for uniql: {', '.join(unknown)} (known: artifact, "
                                       f"rate, max_length, int4_activations, threads)")
        path = artifact or pretrained
        if not path:
            raise InvalidArgumentError("uniql needs model_args artifact=PATH (a uniql artifact or a Hugging Face "
                                       "checkpoint directory)")
        if int4_activations:
            uniql.set_int4_activations(str(int4_activations))
        if threads is not None:
            if int(threads) < 1:
                raise InvalidArgumentError(f"threads must be >= 1, got {threads}")
            uniql._C.kernels_set_threads(int(threads))
        self.path = str(path)
        self.rate = float(rate)
        self.model = uniql.load(self.path, rate=self.rate,
                                max_seq=None if max_length is None else int(max_length))
        self.tokenizer = self.model.tokenizer
        if self.tokenizer is None:
            raise InvalidArgumentError(f"{self.path!r} has no tokenizer.json: lm-eval sends text")
        cfg = self.model.config
        eos = tuple(getattr(cfg, "eos_token_ids", ()) or ())
        bos = getattr(cfg, "bos_token_id", None)
        if not eos and bos is None:
            raise InvalidArgumentError(f"{self.path!r}: config has neither eos_token_id nor bos_token_id")
        self._eot = int(eos[0]) if eos else int(bos)
        self._prefix = int(bos) if bos is not None else self._eot
        self._eos = eos
        self._scorer = Scorer(self.model)

    # ---------------------------------------------------------------------------- lm-eval API ----
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def prefix_token_id(self) -> int:
        return self._prefix

    @property
    def max_length(self) -> int:
        return int(self.model.max_seq)

    @property
    def tokenizer_name(self) -> str:
        return self.path.rstrip("/").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return encode(self.tokenizer, string)

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(list(tokens))

    def get_model_info(self) -> dict[str, Any]:
        return {"model": "uniql", "artifact": self.path, "rate": self.rate, "max_length": self.max_length,
                "uniql_version": uniql.__version__}

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        order = sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2])
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        for i in tqdm(order, desc="uniql loglikelihood", disable=disable_tqdm):
            key, ctx, cont = requests[i]
            ll, greedy = self._scorer.loglikelihood(ctx, cont, greedy=True)
            out[i] = (ll, greedy)
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, (ll, greedy))
        return out  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        res = []
        for req in tqdm(requests, desc="uniql loglikelihood_rolling", disable=disable_tqdm):
            (string,) = req.args
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1))
            total = sum(ll for ll, _ in self._loglikelihood_tokens([(None, c, k) for c, k in windows],
                                                                   disable_tqdm=True))
            res.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return res

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        res = []
        for req in tqdm(requests, desc="uniql generate_until", disable=disable_tqdm):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            eot = self.tok_decode([self.eot_token_id])
            if eot and eot not in until:
                until.append(eot)
            max_new = int(kw.pop("max_gen_toks", 256))
            temperature = float(kw.pop("temperature", 0.0)) if kw.pop("do_sample", False) else 0.0
            seed = int(kw.pop("seed", 0) or 0)
            ctx = self.tok_encode(context) or [self.prefix_token_id]
            text = self._scorer.generate(ctx, until, max_new, self.tokenizer, self._eos, temperature, seed)
            res.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return res


OUTPUT_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice", "generate_until")


def check_tasks(tasks: Sequence[str], include_path: str | Path | None = None) -> Any:
    """Checks a run's tasks before lm-eval starts (lm-eval skips a task file it cannot read without a word and
    then reports its task as unknown): every ``*.yaml`` under ``include_path`` must parse (lm-eval's own loader)
    into a mapping with ``task`` or ``group`` and a known ``output_type``, else FormatError naming the file (and
    the line, for YAML syntax errors); every name in ``tasks`` must be known, else InvalidArgumentError with the
    closest names. Returns lm-eval's ``TaskManager`` for the include path."""
    import difflib

    import yaml
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    if include_path is not None:
        root = Path(include_path)
        if not root.exists():
            raise InvalidArgumentError(f"include path {str(root)!r} does not exist")
        for f in sorted([root] if root.is_file() else root.rglob("*.yaml")):
            try:
                cfg = load_yaml(f, resolve_func=False)
            except yaml.YAMLError as e:
                raise FormatError(f"task file {str(f)!r} is not valid YAML: {' '.join(str(e).split())}") from None
            except (OSError, ValueError, TypeError) as e:
                raise FormatError(f"task file {str(f)!r}: {e}") from None
            if not isinstance(cfg, dict) or not ("task" in cfg or "group" in cfg):
                raise FormatError(f"task file {str(f)!r} has neither a 'task' nor a 'group' key")
            ot = cfg.get("output_type")
            if "task" in cfg and ot is not None and ot not in OUTPUT_TYPES:
                raise FormatError(f"task file {str(f)!r}: output_type {ot!r} is not one of {', '.join(OUTPUT_TYPES)}")
    tm = TaskManager(include_path=None if include_path is None else str(include_path))
    known = set(tm.all_tasks)
    for t in tasks:
        if t not in known and not Path(t).is_file():
            close = difflib.get_close_matches(t, known, n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            where = f" (lm-eval's tasks and {include_path})" if include_path is not None else " (lm-eval's tasks)"
            raise InvalidArgumentError(f"unknown task {t!r}{where}{hint}")
    return tm


def run(artifact: str | Path, tasks: Sequence[str], rate: float = 0.0, *, include_path: str | Path | None = None,
        limit: int | None = None, num_fewshot: int | None = None, log_samples: bool = False,
        **model_args: Any) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on a uniql model after :func:`check_tasks`: lm-eval's results dict."""
    import lm_eval

    tm = check_tasks(tasks, include_path)
    lm = UniqlLM(artifact=str(artifact), rate=rate, **model_args)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=tm, limit=limit,
                                   num_fewshot=num_fewshot, log_samples=log_samples)


def _arg(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """lm-eval-harness's command line with ``uniql`` registered (for environments without the startup hook);
    ``--tasks`` and ``--include_path`` are checked first (:func:`check_tasks`), errors as one line."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    tasks = _arg(args, "--tasks")
    if tasks:
        try:
            check_tasks([t for t in tasks.replace(" ", ",").split(",") if t], _arg(args, "--include_path"))
        except (FormatError, InvalidArgumentError) as e:
            print(f"uniql lm-eval: error: {e}", file=sys.stderr)
            return 2
    sys.argv = [sys.argv[0], *args]
    return int(cli_evaluate() or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
