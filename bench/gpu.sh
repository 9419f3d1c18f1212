#!/usr/bin/env bash
# One command for the GPU measurements: every bench at real size on one CUDA GPU, each against its
# baseline in the same process, in under 8 minutes, then one markdown table for docs/PERFORMANCE.md.
#
#   bash bench/gpu.sh              # real size, --device cuda; refuses to run without CUDA
#   bash bench/gpu.sh --cpu-smoke  # the same benches and flags at tiny size on the CPU (the test suite runs it)
#   bash bench/gpu.sh --dry-run    # print the bench command lines only (with --cpu-smoke: the CPU ones)
#
# Sizes (random weights shaped like real models; nothing is downloaded), chosen to fit 8 minutes on an H200:
#   spectral.py  Llama-3.1-8B shape (d 4096, 32 layers, MLP 14336, 32/8 heads, vocab 128256): top-8 spectra of an
#                8-token prompt (part 1) and peak memory up to d 4096 (part 3). Weights shaped by QR factors
#                (--shaping qr): an SVD of each of its 224 weight matrices would take minutes by itself.
#   gains.py     GPT-2-large shape (d 1280, 36 layers, 20 heads): one 32-token prompt's gain analysis; the
#                bench's family is GPT-2, and its naive baseline forms 36 full 1280 x 1280 block Jacobians.
#   steering.py  GPT-2-large shape: 64 steered tokens per method, 5 alternating runs.
#   jacobian.py  Llama-3.2-3B shape (d 3072, 28 layers, MLP 8192, 24/8 heads, vocab 128256), 8 tokens: two full
#                Jacobians per run (ours and the reference), each 3072 batched VJPs; at 8B this one bench would
#                need a third of the budget.
#   long_prompt.py  Llama-3.2-1B shape, a 2,048-token prompt: every token's top-8 spectrum streamed (issue 21's GPU
#                target: within 80 GB and 2 minutes), the per-token matrix-free path on 2 positions extrapolated; the
#                formed 32 GiB Jacobian is left out (--no-full) to stay in the budget; float32 weights with TF32
#                products (--matmul-precision high): in full float32 the ~2 x 2048 backward passes need ~5 minutes.
#   spectral.py  part 2 (every layer's cumulative spectra) on a Llama with GPT-2-large's sizes (d 1280, 36 layers,
#                MLP 5120, 20 heads): the reference recomputes each of 36 layers from scratch, which at 8B would be
#                ~16 full Jacobians twice over. Last, so it only gets what the budget has left.
#   graph.py     Llama-3.2-1B shape (d 2048, 16 layers, MLP 8192, 32/8 heads, vocab 128256), 64 tokens: the exact
#                attribution graph's rows for 3 logits + 512 visited neurons by one batched backward per block
#                (128 targets per ranking step) against one backward per target through the whole graph; 8.4M
#                neuron sources, so each method's row buffer is 17 GiB (float32) and the result keeps each row's
#                4096 largest edges (the rest summed per node: 2.1M edges instead of 4.3G).
#
# Each bench runs under its own time limit and within the total budget (LLDD_GPU_BUDGET_S, default 480 s);
# one that fails or runs out of time is a row saying so, and the script exits 1. Outputs go to
# LLDD_BENCH_OUT (default: a new temporary folder): each bench's log, summary.jsonl and summary.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

MODE=gpu
DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) MODE=cpu ;;
    --dry-run) DRY=1 ;;  # print the bench command lines (one per line) and run nothing
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option '$arg': use --cpu-smoke, or no option for the GPU run (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$DRY" = 0 ] && [ "$MODE" = gpu ]; then
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "error: bench/gpu.sh needs a CUDA GPU, and torch sees none (torch.cuda.is_available() is False):" \
         "run it on a GPU machine with a CUDA build of torch, or use 'bash bench/gpu.sh --cpu-smoke'" \
         "for the shortened CPU run." >&2
    exit 2
  fi
  BUDGET="${LLDD_GPU_BUDGET_S:-480}"
else
  BUDGET="${LLDD_GPU_BUDGET_S:-600}"
fi

if [ "$DRY" = 0 ]; then
  OUT="${LLDD_BENCH_OUT:-$(mktemp -d -t lldd-bench.XXXXXX)}"
  mkdir -p "$OUT"
  SUMMARY="$OUT/summary.jsonl"
  : > "$SUMMARY"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=0
WALL=()

# run NAME LIMIT_S SCRIPT ARGS...: one bench, its output shown and kept, its rows in $SUMMARY.
run() {
  local name=$1 limit=$2 script=$3
  shift 3
  if [ "$DRY" = 1 ]; then
    echo "$script $*"
    return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  if [ "$left" -lt 30 ]; then
    echo "=== $name: skipped, ${left} s of the ${BUDGET} s budget left"
    "$PY" bench/summary.py "$SUMMARY" --failed "$name" --reason "skipped: the ${BUDGET} s budget was spent"
    FAILED=1
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local before t0=$SECONDS rc
  before=$(wc -l < "$SUMMARY")
  echo "=== $name: python $script $* (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$PY" "$script" "$@" --summary "$SUMMARY" 2>&1 | tee "$OUT/$name.log"
  rc=${PIPESTATUS[0]}
  WALL+=("$name $((SECONDS - t0)) s")
  if [ "$rc" -ne 0 ]; then
    FAILED=1
    if [ "$(wc -l < "$SUMMARY")" -eq "$before" ]; then
      local reason="exited $rc"
      [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && reason="timed out after ${limit} s"
      "$PY" bench/summary.py "$SUMMARY" --failed "$name" --reason "$reason (log: $OUT/$name.log)"
    fi
  fi
  echo
}

if [ "$MODE" = gpu ]; then
  DEV=(--device cuda)
  run spectral-8b 240 bench/spectral.py "${DEV[@]}" --hidden 4096 --intermediate 14336 --layers 32 --heads 32 \
      --kv-heads 8 --vocab 128256 --tokens 8 --k 8 --shaping qr --parts 1,3 --mem-hidden 1024,2048,4096 \
      --repeats 1 --warmup 1
  run gains-gpt2-large 120 bench/gains.py "${DEV[@]}" --layers 36 --hidden 1280 --heads 20 --vocab 50257 \
      --tokens 32 --order 32 --repeats 3
  run steering-gpt2-large 120 bench/steering.py "${DEV[@]}" --layers 36 --hidden 1280 --heads 20 --vocab 50257 \
      --prompt-tokens 16 --tokens 64 --repeats 5
  run jacobian-3b 120 bench/jacobian.py "${DEV[@]}" --hidden 3072 --intermediate 8192 --layers 28 --heads 24 \
      --kv-heads 8 --vocab 128256 --tokens 8 --repeats 2
  run graph-1b 120 bench/graph.py "${DEV[@]}" --hidden 2048 --intermediate 8192 --layers 16 --heads 32 \
      --kv-heads 8 --vocab 128256 --tokens 64 --max-nodes 512 --batch-size 128 --edges-per-row 4096
  run long-prompt-1b 150 bench/long_prompt.py "${DEV[@]}" --hidden 2048 --intermediate 8192 --layers 16 --heads 32 \
      --kv-heads 8 --vocab 128256 --tokens 2048 --k 8 --no-full --baseline-positions 2 --matmul-precision high
  run spectral-layers-1280 150 bench/spectral.py "${DEV[@]}" --hidden 1280 --intermediate 5120 --layers 36 \
      --heads 20 --kv-heads 20 --vocab 50257 --tokens 8 --k 8 --shaping qr --parts 2 --repeats 1 --warmup 1
else
  # the same benches and flags, tiny, on the CPU, one thread each (checks that nothing in the GPU run is broken);
  # spectral's three parts in one process (each bench process spends most of its time importing torch)
  DEV=(--device cpu --threads 1)
  run spectral 120 bench/spectral.py "${DEV[@]}" --hidden 64 --intermediate 128 --layers 2 --heads 4 \
      --kv-heads 2 --vocab 512 --tokens 4 --k 4 --shaping qr --parts 1,2,3 --mem-hidden 32,64 --repeats 1 --warmup 0
  run gains 120 bench/gains.py "${DEV[@]}" --layers 2 --hidden 32 --heads 2 --vocab 512 \
      --tokens 8 --order 4 --repeats 1
  run steering 120 bench/steering.py "${DEV[@]}" --layers 2 --hidden 32 --heads 2 --vocab 512 \
      --prompt-tokens 4 --tokens 4 --repeats 1
  run jacobian 120 bench/jacobian.py "${DEV[@]}" --hidden 64 --intermediate 128 --layers 2 --heads 4 \
      --kv-heads 2 --vocab 512 --tokens 4 --repeats 1
  run graph 120 bench/graph.py "${DEV[@]}" --hidden 64 --intermediate 128 --layers 2 --heads 4 \
      --kv-heads 2 --vocab 512 --tokens 4 --max-nodes 16 --batch-size 8 --edges-per-row 64
  run long-prompt 120 bench/long_prompt.py "${DEV[@]}" --hidden 64 --intermediate 128 --layers 2 --heads 4 \
      --kv-heads 2 --vocab 512 --tokens 32 --k 4 --no-full --baseline-positions 2 --matmul-precision high
fi

[ "$DRY" = 1 ] && exit 0

ENV_LINE=$("$PY" -c 'import torch
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
print(f"torch {torch.__version__}, {dev}")' 2>/dev/null)
{
  echo "## bench/gpu.sh ($([ "$MODE" = gpu ] && echo "real size, CUDA" || echo "--cpu-smoke: tiny sizes, CPU"); $ENV_LINE)"
  echo
  "$PY" bench/summary.py "$SUMMARY"
  echo
  echo "Bench wall times (build + both paths): $(IFS=';'; echo "${WALL[*]}" | sed 's/;/, /g'); total $((SECONDS - START)) s."
} | tee "$OUT/summary.md"
echo "(logs and summary in $OUT)"
exit "$FAILED"
