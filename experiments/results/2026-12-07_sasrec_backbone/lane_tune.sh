#!/bin/bash
# Beauty, SASRec backbone: each g (untrained, 3 trained seeds) at the temperature/alpha chosen on the held-out
# validation half, then the pooled paired tests (the "each g tuned" comparison of the earlier files)
cd /work/wt_s17
export PYTHONPATH=/work/wt_s17
PY=/work/venvs/py311/bin/python
R=/work/runs/s17
mkdir -p $R/tune
for NAME in sasrec_frozen_g sasrec_knnlik_win3_s2020 sasrec_knnlik_win3_s2021 sasrec_knnlik_win3_s2022; do
  nice -n 5 $PY -m experiments.tune --checkpoint $R/$NAME/best_model --grid retriever_temperature=0.07,0.3,0.6,1.0 \
    --grid alpha=0.2,0.3 --grid knn_value_window=3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress \
    --json $R/tune/$NAME.json --save $R/tune/$NAME > $R/tune/$NAME.log 2>&1
  rc=$?
  echo "tune $NAME rc $rc"; date
done
nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py sasrec_beauty 3 $R/tune/sasrec_frozen_g \
  2020=$R/tune/sasrec_knnlik_win3_s2020 2021=$R/tune/sasrec_knnlik_win3_s2021 2022=$R/tune/sasrec_knnlik_win3_s2022 \
  --data ../shared/data/amazon/Beauty.txt --json $R/pooled_sasrec_3seeds_tuned.json > $R/pooled_sasrec_3seeds_tuned.log 2>&1
rc=$?
echo "pooled tuned rc $rc"; date
