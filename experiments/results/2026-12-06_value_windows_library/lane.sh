#!/bin/bash
# kNN-LM value windows through the library: the untrained g tuned over knn_value_window (all validation users, and
# the held-out half), and the three contrastive g of 2026-12-06_three_seeds_tuned at their stored T/alpha with
# knn_value_window 1 or 3 chosen on their held-out half.
cd /work/wt_s10
export PYTHONPATH=/work/wt_s10
PY=/work/venvs/py311/bin/python
O=/work/runs/s10
S8=/work/runs/s8
run() { name=$1; shift; [ -f $O/tune/$name.json ] || nice -n 5 $PY -m experiments.tune "$@" --metric ndcg@10 --test --no-progress --json $O/tune/$name.json --save $O/tune/$name > $O/tune/$name.log 2>&1; echo "$(date +%T) $name rc=$?" >> $O/QUEUE.log; }
G="--grid retriever_temperature=0.6,1.0 --grid alpha=0.2,0.3 --grid knn_value_window=1,3"
for ds in sports beauty; do
  run ${ds}_untrained_win_all --checkpoint $S8/${ds}_frozen_g/best_model $G
  run ${ds}_untrained_win_half --checkpoint $S8/${ds}_frozen_g/best_model $G --valid-holdout 0.5
  for s in 2020 2021 2022; do
    run ${ds}_contrastive_s${s}_win --checkpoint $S8/tune/${ds}_contrastive_s${s} --grid knn_value_window=1,3
  done
done
touch $O/DONE
