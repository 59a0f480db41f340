#!/bin/bash
# Sports: SASRec backbone (sports_duorec.yaml with lmd_sem 0), then untrained g and knn_likelihood g
cd /work/wt_s17
export PYTHONPATH=/work/wt_s17
PY=/work/venvs/py311/bin/python
R=/work/runs/s17
D=../shared/data/amazon/Sports_and_Outdoors.txt
date
nice -n 5 $PY -m experiments.train --config experiments/configs/sports_duorec.yaml --set lmd_sem=0 --set show_progress=false \
  --set output_dir=$R/sasrec_sports > $R/sasrec_sports.log 2>&1
rc=$?
echo "sasrec sports rc $rc"; date
B=$R/sasrec_sports/best_model
nice -n 5 $PY /work/screen/retrieval_stats.py $D $B valid $R/stats_sasrec_sports_valid.json > $R/stats_sasrec_sports.log 2>&1
rc=$?
echo "stats rc $rc"; date
nice -n 5 $PY -m experiments.train --config experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=$B \
  --set show_progress=false --set freeze_retriever=true --set epochs=1 --set output_dir=$R/sports_sasrec_frozen_g > $R/sports_sasrec_frozen_g.log 2>&1
rc=$?
echo "frozen rc $rc"; date
for S in 2020 2021 2022; do
  nice -n 5 $PY -m experiments.train --config experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=$B \
    --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set retriever_objective=knn_likelihood --set epochs=5 --set seed=$S --set output_dir=$R/sports_sasrec_knnlik_win3_s$S > $R/sports_sasrec_knnlik_win3_s$S.log 2>&1
  rc=$?
  echo "knnlik $S rc $rc"; date
  ARGS=""
  for T in 2020 2021 2022; do
    [ -f $R/sports_sasrec_knnlik_win3_s$T/best_model/model.json ] && ARGS="$ARGS $T=$R/sports_sasrec_knnlik_win3_s$T/best_model"
  done
  nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py sasrec_sports 3 $R/sports_sasrec_frozen_g/best_model \
    $ARGS --json $R/pooled_sports_sasrec_upto_s$S.json > $R/pooled_sports_sasrec_upto_s$S.log 2>&1
  rc=$?
  echo "pooled upto $S rc $rc"; date
done
