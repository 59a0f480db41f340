#!/bin/bash
# Sports: the tail of lane_sports.sh that was stopped (each knn_likelihood g tuned over temperature and alpha at m = 3
# on the held-out half, then against the untrained g tuned the same way), run after it at a lower priority.
cd /work/wt_s12
export PYTHONPATH=/work/wt_s12
PY=/work/venvs/py311/bin/python
O=/work/runs/s12
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
tune() {  # name checkpoint
  nice -n 10 $PY -m experiments.tune --checkpoint $2 --grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 \
    --grid knn_value_window=3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress \
    --json $O/tune/$1.json --save $O/tune/$1 > $O/tune/$1.log 2>&1
  rc=$?; echo "$(date +%T) tune $1 rc=$rc" >> $O/QUEUE_sports.log
}
for s in 2020 2021 2022; do tune sports_knnlik_win3_s$s $O/sports_knnlik_win3_s$s/best_model; done
nice -n 10 $PY $S sports 3 /work/runs/s11/tune/sports_untrained_m3 2020=$O/tune/sports_knnlik_win3_s2020 \
  2021=$O/tune/sports_knnlik_win3_s2021 2022=$O/tune/sports_knnlik_win3_s2022 \
  --json $O/pooled_sports_knnlik_m3_tuned.json > $O/pooled_sports_knnlik_m3_tuned.log 2>&1
rc=$?; echo "$(date +%T) pooled sports knnlik m3 tuned rc=$rc" >> $O/QUEUE_sports.log
touch $O/DONE_sports
