#!/bin/bash
# Screen, seed 2020 only: knn_likelihood with value windows of 5 (in the loss, the objective's votes and the fusion)
# instead of 3, on both datasets, judged first on the held-out validation half.
cd /work/wt_s12b
export PYTHONPATH=/work/wt_s12b
PY=/work/venvs/py311/bin/python
O=/work/runs/s12
for D in beauty sports; do
  name=${D}_knnlik_win5_s2020
  [ -f $O/$name/results.json ] || nice -n 5 $PY -m experiments.train --config experiments/configs/${D}_ftragrec_knn_lm.yaml \
    --set pretrained=builtin:${D} --set show_progress=false --set retriever_queries=valid --set knn_value_window=5 \
    --set retriever_objective=knn_likelihood --set epochs=5 --set seed=2020 --set output_dir=$O/$name > $O/$name.log 2>&1 &
done
wait
echo "$(date +%T) win5 screens done" >> $O/QUEUE_win5.log
