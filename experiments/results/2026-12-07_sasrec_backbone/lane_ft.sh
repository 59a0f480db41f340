#!/bin/bash
# FTragrec on the SASRec backbone: untrained g, then knn_likelihood (valid queries, windows 3) seeds 2020-2022
cd /work/wt_s17
export PYTHONPATH=/work/wt_s17
PY=/work/venvs/py311/bin/python
R=/work/runs/s17
until grep -q "sasrec rc" $R/lane_sasrec.out; do sleep 30; done
B=$R/sasrec_beauty/best_model
date
nice -n 5 $PY /work/screen/retrieval_stats.py ../shared/data/amazon/Beauty.txt $B valid $R/stats_sasrec_beauty_valid.json > $R/stats_sasrec.log 2>&1
rc=$?
echo "stats rc $rc"; date
nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml --set pretrained=$B \
  --set show_progress=false --set freeze_retriever=true --set epochs=1 --set output_dir=$R/sasrec_frozen_g > $R/sasrec_frozen_g.log 2>&1
rc=$?
echo "frozen rc $rc"; date
for S in 2020 2021 2022; do
  nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml --set pretrained=$B \
    --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set retriever_objective=knn_likelihood --set epochs=5 --set seed=$S --set output_dir=$R/sasrec_knnlik_win3_s$S > $R/sasrec_knnlik_win3_s$S.log 2>&1
  rc=$?
  echo "knnlik $S rc $rc"; date
  if [ $S = 2020 ]; then
    nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py sasrec_beauty 3 $R/sasrec_frozen_g/best_model \
      2020=$R/sasrec_knnlik_win3_s2020/best_model --data ../shared/data/amazon/Beauty.txt --json $R/pooled_sasrec_s2020.json > $R/pooled_sasrec_s2020.log 2>&1
    rc=$?
    echo "pooled 2020 rc $rc"; date
  fi
done
nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py sasrec_beauty 3 $R/sasrec_frozen_g/best_model \
  2020=$R/sasrec_knnlik_win3_s2020/best_model 2021=$R/sasrec_knnlik_win3_s2021/best_model 2022=$R/sasrec_knnlik_win3_s2022/best_model \
  --data ../shared/data/amazon/Beauty.txt --json $R/pooled_sasrec_3seeds.json > $R/pooled_sasrec_3seeds.log 2>&1
rc=$?
echo "pooled rc $rc"; date
