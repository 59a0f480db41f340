#!/bin/bash
# Screen: g trained by the design's terms under kNN-LM with value windows (m = 3) on validation queries, Sports,
# seed 2020; then T/alpha/window chosen on its held-out half as for the other g.
cd /work/wt_s10
export PYTHONPATH=/work/wt_s10
PY=/work/venvs/py311/bin/python
O=/work/runs/s10
name=sports_design_win3_s2020
nice -n 10 $PY -m experiments.train --config experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=builtin:sports \
  --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 --set epochs=5 --set seed=2020 \
  --set output_dir=$O/$name > $O/$name.log 2>&1
echo "$(date +%T) train $name rc=$?" >> $O/QUEUE2.log
while [ ! -f $O/DONE ]; do sleep 30; done
nice -n 5 $PY -m experiments.tune --checkpoint $O/$name/best_model --grid retriever_temperature=0.6,1.0 --grid alpha=0.2,0.3 \
  --grid knn_value_window=1,3 --metric ndcg@10 --test --no-progress --json $O/tune/$name.json --save $O/tune/$name > $O/tune/$name.log 2>&1
echo "$(date +%T) tune $name rc=$?" >> $O/QUEUE2.log
touch $O/DONE2
