# The device calls of the SmolLM2 GPU fine-tuning run (benchmarks/finetune_gpu.py). A call carries at most 64 MiB
# and a machine stays warm about 30 s between calls, so the run is a chain of calls that follow each other at once.
#
# Stage here first (all in folders that .git/info/exclude ignores):
#   PYTHONPATH=. python benchmarks/finetune_gpu.py pack --artifact ART --hf HF --out /tmp/gpack/data --parts 2
#   .gpu/data <- /tmp/gpack/data; .gpu/whl <- the gguf wheel; .gpu/udata/cal_data <- the calibration texts (not wiki);
#   .gpu/stub/pytest.py (a stand-in when pytest is missing there); .gpu/smoke_cuda.py; .gpu_p0/gguf.part0;
#   .gpu_p1/gguf.part1; .gpu_p1/zs_tasks.pkl.gz <- PYTHONPATH=. python benchmarks/finetune_gpu.py prep-tasks
#       --artifact ART --out zs_tasks.pkl --mmlu-limit 40 && gzip -9 zs_tasks.pkl
#   optional .gpu_p1/lora_init.safetensors: an earlier run's LoRA file (its tensors cast to float16: 4.9 MB, so
#       the call stays under 64 MiB) to continue training from (train --init-lora), e.g. run 2's step-2000 patches
# Calls (each `run` in the repository root; carry in brackets):
#   1. bash benchmarks/finetune_gpu_calls.sh call1                 [.gpu .gpu_p0]  build + CUDA smoke test, ~50 s
#   1b. (optional) bash benchmarks/finetune_gpu_calls.sh stage     [.gpu_p3]       e.g. a rank-64 LoRA to continue from
#   2. WAIT=565 bash benchmarks/finetune_gpu_calls.sh callB         [.gpu_p1]      unpack, start the daemon, wait
#   3. STOP_ON=DONE WAIT=585 bash benchmarks/finetune_gpu_calls.sh hold   (no carry, or [.gpu_p2] once to bring the
#      full MMLU requests: prep-tasks --tasks "" --mmlu-limit 5000, gzipped; repeat while the daemon works)
# Options of callB (environment): DL (training deadline, s), GEN (teacher windows), GEN_BATCH (their batch, 2048), LR, GEN_SEED (a continued run's
# new teacher windows), INIT=0 (train from scratch although .gpu_p1 holds a LoRA file), RANK [ALPHA] (the main arm's
# LoRA rank, alpha 2 x rank), BATCH (windows per step, 32), LOSS_CHUNK (train --loss-chunk: tokens per piece of the
# LM head and the loss, each recomputed in backward, so no (tokens x vocabulary) tensor is made whole; default 4096,
# 0 = all at once as runs 1-5, whose 64 windows peaked at 45.3 GiB: meant to let BATCH=128 fit an H100), MMLU_ALL=1 (full MMLU on all 16 cells, the few-shot prefixes shared,
# instead of 3 cells; MMLU_TF32=1 adds TF32 matmuls), ABL=fp32,int4 (compress and score the sorting / int4 ablations on the side), RANK_B=64 [ALPHA_B, BATCH_B,
# LR_B] (a second LoRA arm of another rank trained from scratch on the same GPU at the same time).
# The daemon (setsid, so it outlives a call while the machine is held) evaluates before (CPU), generates teacher
# text and trains for DL seconds (GPU), evaluates after (CPU: merge, rotate, quantize_artifact, perplexity) and
# runs the zero-shot grid on the GPU twin; every call ends with the results so far in $OUT/res.tgz.
# Budget: DL + ~300 s after the last training step; a fresh start costs 1-2 min of device time.
call1() {
  set -e
  mkdir -p /tmp/g
  cp -r .gpu/data .gpu/whl .gpu/stub .gpu/smoke_cuda.py .gpu_p0/gguf.part0 /tmp/g/
  test -d .gpu/udata && cp -r .gpu/udata /tmp/g/
  for z in /tmp/g/data/*.gz; do test -f "$z" && gunzip -f "$z"; done
  mkdir -p /tmp/g/src; tar cf - --exclude=./.gpu --exclude=./.gpu_p0 --exclude=./.gpu_p1 --exclude=./.git --exclude=./notebooks --exclude='*.so' . | tar xf - -C /tmp/g/src
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/whl/*.whl
  cd /tmp/g/src
  python3 setup.py -q build_ext --inplace > /tmp/g/build.log 2>&1 || { tail -30 /tmp/g/build.log; exit 1; }
  python3 -c "import pytest" 2>/dev/null && echo "pytest present" || cp /tmp/g/stub/pytest.py /tmp/site/
  PYTHONPATH=/tmp/site:/tmp/g/src python3 -c "import uniql, torch, gguf, tqdm; print('ok', torch.__version__, torch.cuda.get_device_name(0), uniql.__file__)"
  echo "build done in $SECONDS s"
  cd /tmp/g/src && PYTHONPATH=/tmp/site:/tmp/g/src timeout 150 python3 /tmp/g/smoke_cuda.py 2>&1 | grep -v Warning | tail -12
  echo "call1 all done in $SECONDS s"
}
_env() {
  cd /tmp/g/src; export PYTHONPATH=/tmp/site:/tmp/g/src PYTHONUNBUFFERED=1 UNIQL_DATA_DIR=/tmp/g/udata UNIQL_NO_FETCH=1
}
callB() {
  test -f /tmp/g/gguf.part0 || { echo "fresh machine: part0 missing"; exit 3; }
  cp .gpu_p1/gguf.part1 /tmp/g/; gunzip -c .gpu_p1/zs_tasks.pkl.gz > /tmp/g/zs_tasks.pkl
  # .gpu_p1/extra: files moved out of .gpu when call1's carry outgrew 64 MiB (udata/, data/*)
  if [ -d .gpu_p1/extra ]; then
    test -d .gpu_p1/extra/udata && cp -r .gpu_p1/extra/udata /tmp/g/
    test -d .gpu_p1/extra/data && cp .gpu_p1/extra/data/* /tmp/g/data/ && for z in /tmp/g/data/*.gz; do test -f "$z" && gunzip -f "$z"; done
  fi
  # an earlier run's patches (float16 copy, to fit the call) to continue from: train --init-lora
  test -f .gpu_p1/lora_init.safetensors && cp .gpu_p1/lora_init.safetensors /tmp/g/
  if [ -f /tmp/g/lora_init.safetensors ] && [ "${INIT:-1}" = 1 ]; then export INIT_LORA=/tmp/g/lora_init.safetensors; fi
  _env
  python3 benchmarks/finetune_gpu.py unpack --data /tmp/g/data --gguf-parts /tmp/g/gguf.part0 /tmp/g/gguf.part1 --out /tmp/g/art 2>&1 | tail -2
  test -f /tmp/g/art/config.json || exit 4
  echo "unpacked at $SECONDS s"
  setsid nohup bash /tmp/g/src/benchmarks/finetune_gpu_calls.sh daemon > /tmp/g/daemon.log 2>&1 < /dev/null &
  sleep 5
  wait_warm
}
daemon() {
  _env; R=/tmp/g/res; mkdir -p $R; echo "daemon start $(date +%T)"
  { UNIQL_NUM_THREADS=8 OMP_NUM_THREADS=8 OPENBLAS_NUM_THREADS=8 python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --hf /tmp/g/hf --wiki /tmp/g/data/wiki_2048.npy --json $R/eval_before.json > $R/eval_before.log 2>&1; [ -n "$ABL" ] && ablations; } < /dev/null &
  [ -n "$RANK_B" ] && { armb > /tmp/g/armb.log 2>&1 < /dev/null & }
  trainA() {
    OMP_NUM_THREADS=4 python3 benchmarks/finetune_gpu.py train --art /tmp/g/art --tokens /tmp/g/data/train_tokens.npy --work /tmp/g/run --out /tmp/g/out2 --deadline $1 --next-seconds 0 --margin 10 --generate ${GEN:-24576} --gen-batch ${GEN_BATCH:-2048} --loss kd --batch $2 ${LOSS_CHUNK:+--loss-chunk $LOSS_CHUNK} --seq-len 256 --eval-every 250 --eval-windows 64 --warmup 100 --lr ${LR:-1e-4} --max-steps ${MAX_STEPS:-7800} ${RANK:+--rank $RANK --alpha ${ALPHA:-$((2 * RANK))}} ${INIT_LORA:+--init-lora $INIT_LORA} ${GEN_SEED:+--gen-seed $GEN_SEED} >> $R/train.log 2>&1
  }
  S0=$SECONDS; trainA ${DL:-950} ${BATCH:-32}
  # a batch that does not fit the GPU (the probe's first steps run out of memory): once more at half the batch,
  # with the time that is left
  if grep -q OutOfMemoryError $R/train.log && [ ! -f /tmp/g/out2/summary.json ]; then
    echo "out of memory at batch ${BATCH:-32}: again at $(( ${BATCH:-32} / 2 ))"; rm -rf /tmp/g/run
    trainA $(( ${DL:-950} - (SECONDS - S0) )) $(( ${BATCH:-32} / 2 ))
  fi
  cp /tmp/g/out2/* $R/ 2>/dev/null; touch $R/TRAINED; echo "trained $(date +%T)"
  L=/tmp/g/out2/lora.safetensors; test -f $L || L=/tmp/g/out2/lora_partial.safetensors
  UNIQL_NUM_THREADS=12 OMP_NUM_THREADS=12 OPENBLAS_NUM_THREADS=12 python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --lora $L --wiki /tmp/g/data/wiki_2048.npy --json $R/eval_after.json > $R/eval_after.log 2>&1 < /dev/null &
  while { [ ! -f /tmp/g/art-ft/config.json ] || [ ! -f /tmp/g/art-rot-int4/config.json ]; } && [ $SECONDS -lt 3000 ]; do sleep 2; done
  OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts after_fp32=/tmp/g/art-ft before_int4=/tmp/g/art-rot-int4 before_fp32=/tmp/g/art --rates 0,0.15 --json $R/zs_main.json > $R/zs_main.log 2>&1
  while [ ! -f /tmp/g/art-ft-rot-int4/config.json ] && [ $SECONDS -lt 3000 ]; do sleep 2; done
  OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts after_int4=/tmp/g/art-ft-rot-int4 --rates 0,0.15 --json $R/zs_main2.json > $R/zs_main2.log 2>&1
  touch $R/ZS_MAIN; echo "zs main $(date +%T)"
  OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts after_fp32=/tmp/g/art-ft after_int4=/tmp/g/art-ft-rot-int4 before_fp32=/tmp/g/art before_int4=/tmp/g/art-rot-int4 --rates 0.25,0.35 --json $R/zs_grid.json > $R/zs_grid.log 2>&1
  touch $R/ZS_GRID; echo "zs grid $(date +%T)"
  # the ablations (ABL=fp32,int4; compressed there while the GPU trains) against the default compressed the same way
  for k in fp32 int4; do
    case ",$ABL," in *,$k,*) ;; *) continue;; esac
    S1=$SECONDS; while [ ! -f /tmp/g/abl/$k.done ] && [ $((SECONDS - S1)) -lt 300 ]; do sleep 2; done
    A=""; for d in /tmp/g/abl/${k}_*; do [ -f $d/config.json ] && A="$A abl_$(basename $d)=$d"; done
    [ -n "$A" ] && OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts $A --rates 0.15,0.35 --json $R/zs_ablations_$k.json > $R/zs_ablations_$k.log 2>&1
  done
  # MMLU 5-shot in full (14 042 questions, carried by a later `hold` call as .gpu_p2/mmlu_full.pkl.gz) on a few cells
  S1=$SECONDS; while [ ! -f /tmp/g/mmlu_full.pkl ] && [ $((SECONDS - S1)) -lt 120 ]; do sleep 2; done
  if [ -f /tmp/g/mmlu_full.pkl ]; then
    # MMLU_ALL=1: every cell of the grid, each subject's five-example prefix run once (--share-prefix; strict fp32
    # unless MMLU_TF32=1); the two "before" cells first, whose answers without prefix sharing a previous run
    # committed (mmlu_full_a / _c), so the per-question agreement is measured before the rest
    if [ -n "$MMLU_ALL" ]; then
      n=0
      for cell in before_fp32=/tmp/g/art@0 before_int4=/tmp/g/art-rot-int4@0.15 after_int4=/tmp/g/art-ft-rot-int4@0.15 after_fp32=/tmp/g/art-ft@0.15 \
                  after_int4=/tmp/g/art-ft-rot-int4@0 after_fp32=/tmp/g/art-ft@0 before_fp32=/tmp/g/art@0.15 before_int4=/tmp/g/art-rot-int4@0 \
                  after_int4=/tmp/g/art-ft-rot-int4@0.35 before_int4=/tmp/g/art-rot-int4@0.35 after_fp32=/tmp/g/art-ft@0.35 before_fp32=/tmp/g/art@0.35 \
                  after_int4=/tmp/g/art-ft-rot-int4@0.25 before_int4=/tmp/g/art-rot-int4@0.25 after_fp32=/tmp/g/art-ft@0.25 before_fp32=/tmp/g/art@0.25; do
        n=$((n + 1))
        OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot ${MMLU_TF32:+--tf32} --share-prefix 64 --tasks /tmp/g/mmlu_full.pkl --arts ${cell%@*} --rates ${cell##*@} --json $R/mmlu_all_$n.json >> $R/mmlu_all.log 2>&1
      done
    else
      OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/mmlu_full.pkl --arts before_fp32=/tmp/g/art --rates 0 --json $R/mmlu_full_a.json > $R/mmlu_full_a.log 2>&1
      OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/mmlu_full.pkl --arts after_int4=/tmp/g/art-ft-rot-int4 --rates 0.15 --json $R/mmlu_full_b.json > $R/mmlu_full_b.log 2>&1
      OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/mmlu_full.pkl --arts before_int4=/tmp/g/art-rot-int4 --rates 0.15,0 --json $R/mmlu_full_c.json > $R/mmlu_full_c.log 2>&1
    fi
  fi
  wait; touch $R/DONE; echo "daemon done $(date +%T)"
}
armb() {   # a second arm on the same GPU at once (RANK_B=64 [ALPHA_B LR_B]): LoRA of another rank from scratch, with
           # run 2's data and seeds (generation seed 0), so its held-out curve compares step for step with run 2's
  _env; R=/tmp/g/res
  OMP_NUM_THREADS=3 python3 benchmarks/finetune_gpu.py train --art /tmp/g/art --tokens /tmp/g/data/train_tokens.npy --work /tmp/g/runB --out /tmp/g/outB --deadline ${DL:-950} --next-seconds 0 --margin 10 --generate ${GEN:-24576} --gen-batch 2048 --loss kd --batch ${BATCH_B:-32} ${LOSS_CHUNK:+--loss-chunk $LOSS_CHUNK} --seq-len 256 --eval-every 250 --eval-windows 64 --warmup 100 --lr ${LR_B:-${LR:-1e-4}} --max-steps 7800 --rank $RANK_B --alpha ${ALPHA_B:-$((2 * RANK_B))} > $R/armB_train.log 2>&1
  cp /tmp/g/outB/summary.json $R/armB_summary.json; cp /tmp/g/runB/log.jsonl $R/armB_log.jsonl; echo "arm B trained $(date +%T)"
  L=/tmp/g/outB/lora.safetensors; test -f $L || L=/tmp/g/outB/lora_partial.safetensors
  UNIQL_NUM_THREADS=4 OMP_NUM_THREADS=4 OPENBLAS_NUM_THREADS=4 python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --lora $L --tag B --wiki /tmp/g/data/wiki_2048.npy --json $R/armB_eval_after.json > $R/armB_eval_after.log 2>&1
  OMP_NUM_THREADS=2 python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts armB_fp32=/tmp/g/art-ftB armB_int4=/tmp/g/art-ftB-rot-int4 --rates 0,0.15,0.35 --json $R/armB_zs.json > $R/armB_zs.log 2>&1
  touch $R/ARMB_DONE; echo "arm B done $(date +%T)"
}
ablations() {   # ABL=fp32,int4 (either or both): artifacts of the default sorting and the ablations, compressed there
                # on 6 CPU threads while the GPU trains. fp32: default, magnitude ranking, split singular values;
                # int4 (compress's default int4: rotated, GPTQ): default, split singular values, no rotation
  cp /tmp/g/art/tokenizer.json /tmp/g/art/tokenizer_config.json /tmp/g/hf/ 2>/dev/null
  mkdir -p /tmp/g/abl
  for k in fp32 int4; do
    case ",$ABL," in *,$k,*) ;; *) continue;; esac
    if [ $k = fp32 ]; then specs="default:--no-quantize magnitude:--no-quantize_--scorer_magnitude split:--no-quantize_--split-sigma"
    else specs="default: split:--split-sigma norotate:--no-rotate"; fi
    for v in $specs; do
      v2=${v#*:}; UNIQL_NUM_THREADS=6 OMP_NUM_THREADS=6 OPENBLAS_NUM_THREADS=6 python3 -m uniql compress /tmp/g/hf -o /tmp/g/abl/${k}_${v%%:*} ${v2//_/ } > /tmp/g/res/abl_${k}_${v%%:*}.log 2>&1
    done
    touch /tmp/g/abl/$k.done
  done
  echo "ablations compressed $(date +%T)"
}
wait_warm() {   # keeps the machine held while the daemon works; ends at WAIT s or when STOP_ON's marker exists
  R=/tmp/g/res; S0=$SECONDS
  while [ $((SECONDS - S0)) -lt ${WAIT:-580} ]; do
    [ -n "$STOP_ON" ] && [ -f $R/$STOP_ON ] && break
    pgrep -f "finetune_gpu_calls.sh daemon" > /dev/null || { echo "daemon not running"; break; }
    sleep 5
  done
  echo "=== $(date +%T)"; cat /tmp/g/daemon.log
  tail -n 3 $R/train.log 2>/dev/null; grep '"event": "eval"' /tmp/g/run/log.jsonl 2>/dev/null | tail -3 | cut -c1-200
  for f in $R/*.log; do echo "--- $f"; tail -n 2 $f | cut -c1-300; done
  nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv,noheader
  cp /tmp/g/run/log.jsonl /tmp/g/run/plan.json /tmp/g/daemon.log $R/ 2>/dev/null
  # what comes back: at most 8 files of 16 MiB each. The results without LoRA files (a rank-64 LoRA is 78 MB in
  # float32: run 4 lost everything when one too-large res.tgz was refused and the machine was then taken back),
  # and the trained LoRA (arm B's too) as float16 in 15 MiB pieces (cat lora_f16.part* > lora_f16.safetensors here)
  tar czf $OUT/res.tgz --exclude='*.safetensors' -C /tmp/g res
  for arm in out2:lora outB:lora_b; do
    L=/tmp/g/${arm%%:*}/lora.safetensors; test -f $L || L=/tmp/g/${arm%%:*}/lora_partial.safetensors
    [ -f $L ] || continue
    python3 -c "import sys; from safetensors import safe_open; from safetensors.torch import save_file
f = safe_open(sys.argv[1], 'pt'); save_file({k: f.get_tensor(k).half() for k in f.keys()}, sys.argv[2], metadata=f.metadata())" $L /tmp/g/${arm##*:}_f16.safetensors \
      && split -b 15m -d -a 1 /tmp/g/${arm##*:}_f16.safetensors $OUT/${arm##*:}_f16.part
  done
  ls -la $OUT
}
stage() {   # a short call between call1 and callB that brings one more folder (e.g. [.gpu_p3] with a LoRA to continue
            # from, lora_init.safetensors as float16: a rank-64 one is 39 MB, too big for callB's carry) into /tmp/g
  test -d /tmp/g || { echo "fresh machine: call1 first"; exit 3; }
  for d in .gpu_p3 .gpu_p4; do test -d $d && cp -r $d/. /tmp/g/ && echo "staged $d: $(ls $d)"; done
}
hold() {   # a hold call may carry .gpu_p2/mmlu_full.pkl.gz (the full MMLU requests, too big for callB)
  if [ -f .gpu_p2/mmlu_full.pkl.gz ] && [ ! -f /tmp/g/mmlu_full.pkl ]; then
    gunzip -c .gpu_p2/mmlu_full.pkl.gz > /tmp/g/mmlu_full.tmp && mv /tmp/g/mmlu_full.tmp /tmp/g/mmlu_full.pkl; echo "mmlu_full staged"
  fi
  wait_warm
}
"$@"
