# The three device calls of the SmolLM2 GPU run (benchmarks/finetune_gpu.py), each run from the root of a
# checkout that carries .gpu (src = uniql/ csrc/ setup.py pyproject.toml README.md benchmarks/finetune_gpu.py tests/,
# data = the pack output, whl = the gguf wheel), .gpu_p0/gguf.part0 (call 1) and .gpu_p1/gguf.part1 (call 2).
# Calls must follow each other within the machine's idle window (state lives in /tmp/g there).
call1() {
  set -e
  mkdir -p /tmp/g
  cp -r .gpu/src .gpu/data .gpu/whl .gpu/smoke_cuda.py .gpu_p0/gguf.part0 /tmp/g/
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/g/whl/*.whl
  cd /tmp/g/src
  python3 setup.py -q build_ext --inplace > /tmp/g/build.log 2>&1 || { tail -30 /tmp/g/build.log; exit 1; }
  PYTHONPATH=/tmp/site:/tmp/g/src python3 -c "import uniql, torch, gguf; print('ok', torch.__version__, torch.cuda.get_device_name(0), uniql.__file__)"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  echo "build done in $SECONDS s"
  echo "call1 all done in $SECONDS s"
}
call2() {   # DL=seconds for this call (560)
  set -e
  test -f /tmp/g/gguf.part0 || { echo "fresh machine: part0 missing"; exit 3; }
  cp .gpu_p1/gguf.part1 /tmp/g/
  cp .gpu/src/uniql/*.py /tmp/g/src/uniql/; cp .gpu/src/benchmarks/finetune_gpu.py /tmp/g/src/benchmarks/
  cd /tmp/g/src; export PYTHONPATH=/tmp/site:/tmp/g/src PYTHONUNBUFFERED=1
  python3 benchmarks/finetune_gpu.py unpack --data /tmp/g/data --gguf-parts /tmp/g/gguf.part0 /tmp/g/gguf.part1 --out /tmp/g/art 2>&1 | tail -3
  UNIQL_NUM_THREADS=10 OMP_NUM_THREADS=10 OPENBLAS_NUM_THREADS=10 setsid nohup python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --hf /tmp/g/hf --wiki /tmp/g/data/wiki_2048.npy --json /tmp/g/eval_before.json > /tmp/g/eval_before.log 2>&1 < /dev/null &
  python3 benchmarks/finetune_gpu.py train --art /tmp/g/art --tokens /tmp/g/data/train_tokens.npy --work /tmp/g/run --out /tmp/g/out2 --deadline $((${DL:-560} - SECONDS)) --next-seconds 0 --generate 8192 --gen-batch 1024 --loss kd --batch 32 --seq-len 256 --eval-every 250 --eval-windows 64 2>&1 | tail -20
  cp /tmp/g/out2/* $OUT/; tail -5 /tmp/g/eval_before.log; cp /tmp/g/eval_before.json $OUT/ 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  echo "call2 done in $SECONDS s"
}
call3() {
  test -f /tmp/g/art/config.json || { echo "fresh machine: no artifact"; exit 3; }
  cd /tmp/g/src; export PYTHONPATH=/tmp/site:/tmp/g/src PYTHONUNBUFFERED=1
  L=/tmp/g/out2/lora.safetensors; test -f $L || L=/tmp/g/out2/lora_partial.safetensors
  python3 benchmarks/finetune_gpu.py evaluate --art /tmp/g/art --lora $L --wiki /tmp/g/data/wiki_2048.npy --json $OUT/eval_after.json 2>&1 | tail -4
  tail -3 /tmp/g/eval_before.log; cp /tmp/g/eval_before.json $OUT/ 2>/dev/null || true
  echo "call3 done in $SECONDS s"
}
"$@"
