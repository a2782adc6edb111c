#!/usr/bin/env bash
# The GPU check in one call: what the GPU machine lacks, installed from named wheels; the GPU
# tests; the benchmark grid (zero-shot and learned, 512² and 1024², fp32/bf16/fp16, eager and
# CUDA graphs, one torch.compile run, each against the SAM2 peer); one table plus JSON.
#
#   scripts/gpu_check.sh --fetch-wheels   # where PyPI is reachable: the wheels into .whl/ (< 1 MB)
#   scripts/gpu_check.sh                  # on the GPU machine, from the repository root; at most 8 minutes
#   scripts/gpu_check.sh --dry-run        # any CPU machine: the same steps, test preset, tiny sizes (a CI test)
#
# The GPU machine has PyTorch with CUDA but no network: the pure-Python packages it lacks
# travel as wheels in .whl/ (git-ignored; a few hundred KB). Only packages it does not
# already have are installed (into a folder of their own, --no-deps: the machine's torch,
# numpy and friends stay as they are). With the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Results go to $OUT when set (the device tool's folder that comes back), else runs/gpu_check:
#   gpu_check.log      everything this script printed
#   pytest.log         the GPU tests (pytest -m gpu)
#   bench_matrix.json  every grid point's full `m4sam bench` report, the environment, timings
#   bench_matrix.md    the table
# The exit status is non-zero when a test or a grid point failed; the table is printed anyway.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
MODE=gpu
case "${1:-}" in
  "") ;;
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=fetch ;;
  -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) printf 'gpu_check: unknown argument %s (use --dry-run, --fetch-wheels or nothing)\n' "$1" >&2; exit 2 ;;
esac

# module the code imports = the distribution that provides it, pinned as in requirements-dev.txt
PACKAGES=(
  "sam2=sam2==1.1.0"
  "hydra=hydra-core==1.3.8"
  "omegaconf=omegaconf==2.3.1"
  "antlr4=antlr4-python3-runtime==4.9.3"
  "iopath=iopath==0.1.10"
  "py_sod_metrics=pysodmetrics==1.6.2"
)
WHEELS="$ROOT/.whl"
# what runs on the GPU machine: the GPU tests of the ROS-free test modules (the GPU machine has no rclpy)
GPU_TESTS=(test/test_engines_gpu.py test/test_train.py test/test_train_distributed.py)

say() { printf '[gpu_check %5ss] %s\n' "$(( $(date +%s) - START ))" "$*"; }
die() { printf 'gpu_check: error: %s\n' "$*" >&2; exit 1; }
wheel_glob() {  # distribution==version -> the wheel file name's start, as pip writes it
  local spec=$1 name version
  name=${spec%%==*}; version=${spec##*==}
  printf '%s-%s-' "$(printf '%s' "$name" | tr 'A-Z-' 'a-z_')" "$version"
}

START=$(date +%s)
if [ "$MODE" = fetch ]; then
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  [ -x "$PY" ] || die "--fetch-wheels builds sam2's wheel with the project's torch: run scripts/bootstrap.sh first (or set PYTHON)"
  mkdir -p "$WHEELS"
  specs=()
  for entry in "${PACKAGES[@]}"; do
    spec=${entry#*=}
    [ "${spec%%==*}" = sam2 ] || specs+=("$spec")
  done
  "$PY" -m pip wheel -q --no-deps -w "$WHEELS" "${specs[@]}"
  # sam2 ships as source; without its optional CUDA extension it is a pure-Python wheel
  SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "sam2==1.1.0"
  for entry in "${PACKAGES[@]}"; do
    prefix=$(wheel_glob "${entry#*=}")
    ls "$WHEELS/$prefix"*-none-any.whl >/dev/null 2>&1 || die "no pure-Python wheel $prefix*-none-any.whl in $WHEELS"
  done
  say "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)); carry .whl in the device call"
  ls -1 "$WHEELS"
  exit 0
fi

if [ "$MODE" = dry ]; then
  PY=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || command -v python3 )}
  OUT_DIR=${OUT:-$ROOT/runs/gpu_check_dry}
  export OMP_NUM_THREADS=1  # tiny models on a shared CPU: more threads only contend
  BUDGET_S=${GPU_CHECK_BUDGET_S:-600}
  GRID=(--preset test --sizes 64 --frames 6 --warmup 2 --parity-frames 2 --camera 80x60 --device cpu)
else
  PY=${PYTHON:-python3}
  OUT_DIR=${OUT:-$ROOT/runs/gpu_check}
  BUDGET_S=${GPU_CHECK_BUDGET_S:-450}  # the whole script; the lease's command limit is 8 minutes
  GRID=(--preset hiera_t --sizes 512,1024 --frames 40 --warmup 10 --parity-frames 8 --camera 640x480 --device cuda
        --compile-runs learned:512:bf16)
fi
mkdir -p "$OUT_DIR"
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1

main() {

  say "mode $MODE; python $PY; results in $OUT_DIR"
  "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
EOF
  [ "$MODE" = dry ] || "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' ||
    die "torch sees no CUDA GPU here; on a CPU machine run scripts/gpu_check.sh --dry-run"

  # --- 1. what the machine lacks, from the wheels ------------------------------------------
  missing=()
  for entry in "${PACKAGES[@]}"; do
    module=${entry%%=*}; spec=${entry#*=}
    if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
      say "present: $spec's module $module"
    else
      wheel=$(ls "$WHEELS/$(wheel_glob "$spec")"*.whl 2>/dev/null | head -n 1 || true)
      [ -n "$wheel" ] || die "$module is missing and .whl/ has no wheel for $spec: run scripts/gpu_check.sh --fetch-wheels
    where PyPI is reachable, then carry .whl (device tool: carry=[\".whl\"])"
      missing+=("$wheel")
    fi
  done
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${#missing[@]} wheel(s) into $SITE: ${missing[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${missing[@]}"
  fi
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  "$PY" -c "import sam2, hydra, iopath, py_sod_metrics, m4sam_ros.tools.bench" || die "the packages still do not import"

  # --- 2. the GPU tests ------------------------------------------------------------------------
  remaining() { echo $(( BUDGET_S - ($(date +%s) - START) )); }
  say "pytest -m gpu ${GPU_TESTS[*]}"
  set +e
  timeout 170 "$PY" -m pytest -m gpu -p no:cacheprovider -rA -q "${GPU_TESTS[@]}" 2>&1 | tee "$OUT_DIR/pytest.log"
  tests=${PIPESTATUS[0]}
  set -e
  [ "$tests" -eq 124 ] && say "pytest ran past its 170 s and was stopped"
  say "pytest exit status $tests"

  # --- 3. the benchmark grid --------------------------------------------------------------------
  left=$(remaining)
  [ "$left" -gt 60 ] || die "no time left for the benchmark ($left s)"
  say "m4sam bench-matrix ${GRID[*]} (starts no run after $(( left - 60 )) s)"
  set +e
  timeout "$left" "$PY" -m m4sam_ros.cli bench-matrix "${GRID[@]}" --budget-s "$(( left - 60 ))" \
    --output-dir "$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_bench.XXXXXX")" \
    --json "$OUT_DIR/bench_matrix.json" --table "$OUT_DIR/bench_matrix.md" 2> "$OUT_DIR/bench_matrix.stderr"
  grid=$?
  set -e
  if [ "$grid" -eq 124 ]; then  # stopped from outside mid-run: the table of what was measured
    say "bench-matrix ran past the time left and was stopped; the grid so far:"
    cat "$OUT_DIR/bench_matrix.md" 2>/dev/null || true
  fi
  [ "$grid" -eq 0 ] || tail -n 30 "$OUT_DIR/bench_matrix.stderr"
  say "bench-matrix exit status $grid; tests $tests"
  [ "$tests" -eq 0 ] && [ "$grid" -eq 0 ]
}

main 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"
