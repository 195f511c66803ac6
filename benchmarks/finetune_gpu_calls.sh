# The device calls of the SmolLM2 GPU run (benchmarks/finetune_gpu.py), as run on 2026-12-07 (an H100 80GB).
# Stage here first:  PYTHONPATH=. python benchmarks/finetune_gpu.py pack --artifact ART --hf HF --out /tmp/gpack/data --parts 2
#   .gpu/data <- /tmp/gpack/data; .gpu/whl <- the gguf wheel; .gpu/udata/cal_data <- the calibration texts (not wiki);
#   .gpu/stub/pytest.py (a stand-in when pytest is missing there); .gpu_p0/gguf.part0; .gpu_p1/gguf.part1;
#   .gpu_p1/zs_tasks.pkl <- PYTHONPATH=. python benchmarks/finetune_gpu.py prep-tasks --artifact ART --out zs_tasks.pkl
# Call 1 carries .gpu and .gpu_p0 (build + CUDA smoke test); callB carries .gpu_p1 and must follow within the
# machine's idle window (state lives in /tmp/g there). Run as: bash benchmarks/finetune_gpu_calls.sh call1|callB|zeroshot
call1() {
  set -e
  mkdir -p /tmp/g
  cp -r .gpu/data .gpu/whl .gpu/stub .gpu/udata .gpu/smoke_cuda.py .gpu_p0/gguf.part0 /tmp/g/
  mkdir -p /tmp/g/src; tar cf - --exclude=./.gpu --exclude=./.gpu_p0 --exclude=./.gpu_p1 --exclude=./.git --exclude=./notebooks --exclude='*.so' . | tar xf - -C /tmp/g/src
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/whl/*.whl
  cd /tmp/g/src
  python3 setup.py -q build_ext --inplace > /tmp/g/build.log 2>&1 || { tail -30 /tmp/g/build.log; exit 1; }
  python3 -c "import pytest" 2>/dev/null && echo "pytest present" || cp /tmp/g/stub/pytest.py /tmp/site/
  PYTHONPATH=/tmp/site:/tmp/g/src python3 -c "import uniql, torch, gguf, tqdm; print('ok', torch.__version__, torch.cuda.get_device_name(0), uniql.__file__)"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  echo "build done in $SECONDS s"
  cd /tmp/g/src && PYTHONPATH=/tmp/site:/tmp/g/src timeout 150 python3 /tmp/g/smoke_cuda.py 2>&1 | grep -v Warning | tail -12
  echo "call1 all done in $SECONDS s"
}
callB() {   # END=seconds for the whole call, DL=seconds for generation + training
  test -f /tmp/g/gguf.part0 || { echo "fresh machine: part0 missing"; exit 3; }
  cp .gpu_p1/gguf.part1 .gpu_p1/zs_tasks.pkl /tmp/g/
  cd /tmp/g/src; export PYTHONPATH=/tmp/site:/tmp/g/src PYTHONUNBUFFERED=1 UNIQL_DATA_DIR=/tmp/g/udata UNIQL_NO_FETCH=1
  python3 benchmarks/finetune_gpu.py unpack --data /tmp/g/data --gguf-parts /tmp/g/gguf.part0 /tmp/g/gguf.part1 --out /tmp/g/art 2>&1 | tail -2 || exit 4
  UNIQL_NUM_THREADS=8 OMP_NUM_THREADS=8 OPENBLAS_NUM_THREADS=8 timeout $((${END:-500} - 30)) python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --hf /tmp/g/hf --wiki /tmp/g/data/wiki_2048.npy --json $OUT/eval_before.json > $OUT/eval_before.log 2>&1 < /dev/null &
  OMP_NUM_THREADS=4 python3 benchmarks/finetune_gpu.py train --art /tmp/g/art --tokens /tmp/g/data/train_tokens.npy --work /tmp/g/run --out /tmp/g/out2 --deadline $((${DL:-250} - SECONDS)) --next-seconds 0 --margin 10 --generate ${GEN:-24576} --gen-batch 2048 --loss kd --batch 32 --seq-len 256 --eval-every 200 --eval-windows 64 --warmup 60 > $OUT/train.log 2>&1
  tail -4 $OUT/train.log; cp /tmp/g/out2/* $OUT/
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  echo "train done at $SECONDS s"
  L=/tmp/g/out2/lora.safetensors; test -f $L || L=/tmp/g/out2/lora_partial.safetensors
  UNIQL_NUM_THREADS=8 OMP_NUM_THREADS=8 OPENBLAS_NUM_THREADS=8 timeout $((${END:-500} - SECONDS)) python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --lora $L --wiki /tmp/g/data/wiki_2048.npy --json $OUT/eval_after.json > $OUT/eval_after.log 2>&1 &
  OMP_NUM_THREADS=2 timeout $((${END:-500} - SECONDS)) python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts before_fp32=/tmp/g/art --rates 0,0.15 --json $OUT/zs_before_fp32.json > $OUT/zs1.log 2>&1
  echo "zs before fp32 at $SECONDS s"; tail -2 $OUT/zs1.log
  while [ ! -f /tmp/g/art-ft/config.json ] && [ $SECONDS -lt $((${END:-500} - 20)) ]; do sleep 2; done
  OMP_NUM_THREADS=2 timeout $((${END:-500} - SECONDS)) python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts after_fp32=/tmp/g/art-ft --rates 0,0.15 --json $OUT/zs_after_fp32.json > $OUT/zs2.log 2>&1
  echo "zs after fp32 at $SECONDS s"; tail -2 $OUT/zs2.log
  test -f /tmp/g/art-rot-int4/config.json && OMP_NUM_THREADS=2 timeout $((${END:-500} + 5 - SECONDS)) python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts before_int4=/tmp/g/art-rot-int4 --rates 0,0.15 --json $OUT/zs_before_int4.json > $OUT/zs3.log 2>&1
  echo "zs before int4 at $SECONDS s"
  wait
  tail -n 3 $OUT/eval_before.log $OUT/eval_after.log
  echo "callB done in $SECONDS s"
}
zeroshot() {   # all four artifacts at 0 and 15% in one JSON (a call brings back a limited number of files)
  cd /tmp/g/src && export PYTHONPATH=/tmp/site:/tmp/g/src UNIQL_DATA_DIR=/tmp/g/udata UNIQL_NO_FETCH=1
  python3 benchmarks/finetune_gpu.py zeroshot --tasks /tmp/g/zs_tasks.pkl --arts before_fp32=/tmp/g/art after_fp32=/tmp/g/art-ft \
    before_int4=/tmp/g/art-rot-int4 after_int4=/tmp/g/art-ft-rot-int4 --rates 0,0.15 --json $OUT/zs_all.json
}
"$@"
