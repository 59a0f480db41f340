#!/bin/bash
while [ ! -f /work/runs/lt/DONE ]; do sleep 30; done
cd /work/wt_lt
PY=/work/venvs/py311/bin/python
run() {  # name, extra args
  local name=$1; shift
  [ -f /work/runs/lt/$name/results.json ] && return
  nice -n 10 $PY -m experiments.train "$@" --set show_progress=false --set retriever_queries=valid \
      --set output_dir=/work/runs/lt/$name > /work/runs/lt/$name.log 2>&1
}
cmp() {  # frozen ref, name
  [ -f /work/runs/lt/cmp_$2.json ] && return
  nice -n 10 $PY -m experiments.compare --a $1 --b /work/runs/lt/$2/best_model --no-progress --json /work/runs/lt/cmp_$2.json > /work/runs/lt/cmp_$2.log 2>&1
}
# longer training: the 5-epoch runs' validation NDCG@10 was still rising at their last epoch
run beauty_contrastive_e20_s2020 --config experiments/configs/quickstart.yaml --set retriever_objective=contrastive --set epochs=20 --set seed=2020
cmp /work/runs/obj/frozen_g/best_model beauty_contrastive_e20_s2020
# more capacity as well
run beauty_contrastive_e20_l2w512_s2020 --config experiments/configs/quickstart.yaml --set retriever_objective=contrastive --set epochs=20 --set retriever_layers=2 --set retriever_inner_size=512 --set seed=2020
cmp /work/runs/obj/frozen_g/best_model beauty_contrastive_e20_l2w512_s2020
touch /work/runs/lt/DONE2
