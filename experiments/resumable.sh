# Sourced by the experiment scripts: a training run folder that survives a session's end.
# start_or_resume DIR records which sdpg.py trains DIR (trained_by: the tables refuse to compare runs whose sdpg.py
# differs; a later commit that leaves sdpg.py alone trains the same runs) and prints the flag that continues it:
# --resume from its newest step_N/, --overwrite for a run stopped before its first checkpoint, else nothing.
start_or_resume() {
  mkdir -p "$1"
  [ -f "$1/trained_by" ] || echo "commit $(git rev-parse HEAD) sdpg.py $(git hash-object sdpg.py)" > "$1/trained_by"
  if ls -d "$1"/step_* > /dev/null 2>&1; then
    echo --resume
  elif [ -f "$1/config.json" ]; then
    echo --overwrite
  fi
}
