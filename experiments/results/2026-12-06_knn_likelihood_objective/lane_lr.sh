#!/bin/bash
# Beauty, seed 2020: knn_likelihood with a 10x learning rate for g (0.01), a screen on the held-out validation half
# (g moves little at 0.001: 44 steps per epoch on 11,181 validation queries).
cd /work/wt_s12
export PYTHONPATH=/work/wt_s12
PY=/work/venvs/py311/bin/python
O=/work/runs/s12
name=beauty_knnlik_win3_lr01_s2020
[ -f $O/$name/results.json ] || nice -n 10 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml \
  --set pretrained=builtin:beauty --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
  --set retriever_objective=knn_likelihood --set learning_rate=0.01 --set epochs=5 --set seed=2020 \
  --set output_dir=$O/$name > $O/$name.log 2>&1
rc=$?; echo "$(date +%T) train $name rc=$rc" >> $O/QUEUE_lr.log
