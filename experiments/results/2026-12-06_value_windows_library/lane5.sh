#!/bin/bash
# Seeds 2021, 2022 of the screen (design terms, kNN-LM value windows m = 3, validation queries, Sports), then all three
# against the same configuration with g untrained (the frozen-g model at m = 3), per seed and pooled.
cd /work/wt_s10b
export PYTHONPATH=/work/wt_s10b
PY=/work/venvs/py311/bin/python
O=/work/runs/s10
S8=/work/runs/s8
for s in 2021 2022; do
  name=sports_design_win3_s$s
  [ -f $O/$name/results.json ] || nice -n 10 $PY -m experiments.train --config experiments/configs/sports_ftragrec_knn_lm.yaml \
    --set pretrained=builtin:sports --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set epochs=5 --set seed=$s --set output_dir=$O/$name > $O/$name.log 2>&1
  echo "$(date +%T) train $name rc=$?" >> $O/QUEUE5.log
done
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
nice -n 5 $PY $S sports 3 $S8/sports_frozen_g/best_model 2020=$O/sports_design_win3_s2020/best_model \
  2021=$O/sports_design_win3_s2021/best_model 2022=$O/sports_design_win3_s2022/best_model \
  --json $O/pooled_sports_design_m3.json > $O/pooled_sports_design_m3.log 2>&1
echo "$(date +%T) pooled sports design m3 rc=$?" >> $O/QUEUE5.log
touch $O/DONE5
