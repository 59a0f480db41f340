#!/bin/bash
# The prototype's Sports choice (m = 3, T 0.6, alpha 0.2) through the library, to check the two agree on test.
cd /work/wt_s10
export PYTHONPATH=/work/wt_s10
PY=/work/venvs/py311/bin/python
O=/work/runs/s10
while [ ! -f $O/DONE ]; do sleep 30; done
nice -n 5 $PY -m experiments.evaluate --checkpoint /work/runs/s8/sports_frozen_g/best_model --set knn_value_window=3 \
  --set retriever_temperature=0.6 --set alpha=0.2 --no-progress --json $O/sports_untrained_m3_eval.json > $O/sports_untrained_m3_eval.log 2>&1
echo "$(date +%T) eval sports m3 rc=$?" >> $O/QUEUE3.log
touch $O/DONE3
