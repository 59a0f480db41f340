#!/bin/bash
# Beauty, SASRec backbone: g trained at the settings validation chose for the untrained g (T 1.0, alpha 0.3),
# against the untrained g at those settings
cd /work/wt_s17
export PYTHONPATH=/work/wt_s17
PY=/work/venvs/py311/bin/python
R=/work/runs/s17
B=$R/sasrec_beauty/best_model
nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml --set pretrained=$B \
  --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
  --set retriever_objective=knn_likelihood --set retriever_temperature=1.0 --set alpha=0.3 --set epochs=5 --set seed=2020 \
  --set output_dir=$R/sasrec_knnlik_win3_t1a03_s2020 > $R/sasrec_knnlik_win3_t1a03_s2020.log 2>&1
rc=$?
echo "train t1 rc $rc"; date
until grep -q "pooled tuned rc" $R/lane_tune.out; do sleep 20; done
nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py sasrec_beauty 3 $R/tune/sasrec_frozen_g \
  2020=$R/sasrec_knnlik_win3_t1a03_s2020/best_model --data ../shared/data/amazon/Beauty.txt \
  --json $R/pooled_sasrec_t1a03_s2020.json > $R/pooled_sasrec_t1a03_s2020.log 2>&1
rc=$?
echo "pooled t1 rc $rc"; date
