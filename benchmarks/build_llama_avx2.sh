#!/bin/sh
# The llama.cpp shared libraries (libllama, libggml*) of the llama-cpp-python version the project pins, built for
# AVX2 only (AVX, AVX2, FMA, F16C, BMI2; no AVX-512, AVX-VNNI or AMX), for `benchmarks/vs_llamacpp.py --llama-lib DIR`
# and `python -m uniql.bench --llama-lib DIR`: on an AVX-512 machine the package's own build runs llama.cpp's AVX-512
# VNNI kernels, which an AVX2-only CPU does not have. Everything else as the package builds it (Release, OpenMP,
# llamafile sgemm, Q4_0 repacking). ~3 minutes on 2 cores.
#
#   sh benchmarks/build_llama_avx2.sh [OUT_DIR]      # default ~/.cache/uniql/llama_avx2/lib
set -eu
OUT=${1:-$HOME/.cache/uniql/llama_avx2/lib}
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VER=$("$PY" -c "import llama_cpp; print(llama_cpp.__version__)" 2>/dev/null || echo 0.3.36)
(cd "$WORK" && "$PY" -m pip download -q --no-binary :all: --no-deps "llama-cpp-python==$VER" && tar xzf llama_cpp_python-*.tar.gz)
SRC=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
  -DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
  -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF \
  -DGGML_OPENMP=ON -DGGML_BLAS=OFF -DGGML_CCACHE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_COMMON=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_RPATH='$ORIGIN'
nice -n 10 cmake --build "$WORK/build" --target llama -j "$(nproc)"
mkdir -p "$OUT"
cp -a "$WORK"/build/bin/lib*.so* "$OUT"/
LLAMA_CPP_LIB_PATH="$OUT" "$PY" -c "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
