#!/bin/bash
# Sports: the three window-trained g of runs/s10 and the untrained g, each tuned over temperature and alpha at m = 3
# on the held-out half, then the tuned models compared.
cd /work/wt_s11
export PYTHONPATH=/work/wt_s11
PY=/work/venvs/py311/bin/python
O=/work/runs/s11
S10=/work/runs/s10
S8=/work/runs/s8
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
tune() {  # name checkpoint
  nice -n 5 $PY -m experiments.tune --checkpoint $2 --grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 \
    --grid knn_value_window=3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress \
    --json $O/tune/$1.json --save $O/tune/$1 > $O/tune/$1.log 2>&1
  echo "$(date +%T) tune $1 rc=$?" >> $O/QUEUE_B.log
}
tune sports_untrained_m3 $S8/sports_frozen_g/best_model
for s in 2020 2021 2022; do tune sports_design_win3_s$s $S10/sports_design_win3_s$s/best_model; done
nice -n 5 $PY $S sports 3 $O/tune/sports_untrained_m3 2020=$O/tune/sports_design_win3_s2020 \
  2021=$O/tune/sports_design_win3_s2021 2022=$O/tune/sports_design_win3_s2022 \
  --json $O/pooled_sports_design_m3_tuned.json > $O/pooled_sports_design_m3_tuned.log 2>&1
echo "$(date +%T) pooled sports design m3 tuned rc=$?" >> $O/QUEUE_B.log
touch $O/DONE_B
