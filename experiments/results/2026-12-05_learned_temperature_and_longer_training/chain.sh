#!/bin/bash
# learnable_temperature runs: kNN-LM, validation queries, 5 epochs (as 2026-12-05_valid_queries_three_seeds.md)
cd /work/wt_lt
PY=/work/venvs/py311/bin/python
run() {  # name, extra args
  local name=$1; shift
  [ -f /work/runs/lt/$name/results.json ] && return
  nice -n 10 $PY -m experiments.train "$@" --set show_progress=false --set retriever_queries=valid --set epochs=5 \
      --set learnable_temperature=true --set output_dir=/work/runs/lt/$name > /work/runs/lt/$name.log 2>&1
}
cmp() {  # frozen ref, name
  [ -f /work/runs/lt/cmp_$2.json ] && return
  nice -n 10 $PY -m experiments.compare --a $1 --b /work/runs/lt/$2/best_model --no-progress --json /work/runs/lt/cmp_$2.json > /work/runs/lt/cmp_$2.log 2>&1
}
run beauty_contrastive_lt_s2020 --config experiments/configs/quickstart.yaml --set retriever_objective=contrastive --set seed=2020
cmp /work/runs/obj/frozen_g/best_model beauty_contrastive_lt_s2020
run beauty_frozen_lt --config experiments/configs/quickstart.yaml --set freeze_retriever=true --set seed=2020
cmp /work/runs/obj/frozen_g/best_model beauty_frozen_lt
run beauty_design_lt_s2020 --config experiments/configs/quickstart.yaml --set seed=2020
cmp /work/runs/obj/frozen_g/best_model beauty_design_lt_s2020
touch /work/runs/lt/DONE
