#!/bin/bash
# After lane_held_out.sh: the same held-out queries with the design's terms only (no retriever_objective), seed 2020.
cd /work/wt_hold  # a git worktree at 6e2be5e
export PYTHONPATH=/work/wt_hold
PY=/work/venvs/py311/bin/python
O=/work/runs/s15
B=$O/beauty-duorec-hold2-s2020/best_model
while [ ! -f $O/DONE ]; do sleep 20; done
name=hold2_design_s2020
nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml \
  --set pretrained=$B --set show_progress=false --set knn_value_window=3 --set retriever_queries=held_out \
  --set epochs=3 --set seed=2020 --set output_dir=$O/$name > $O/$name.log 2>&1
rc=$?
echo "$(date +%T) train $name rc=$rc" >> $O/QUEUE.log
nice -n 5 $PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py beauty 3 $O/hold2_untrained/best_model \
  2020=$O/$name/best_model --data /work/shared/data/amazon/Beauty.txt --json $O/pooled_hold2_design_s2020.json \
  > $O/pooled_hold2_design_s2020.log 2>&1
rc=$?
echo "$(date +%T) pooled_hold2_design_s2020 rc=$rc" >> $O/QUEUE.log
touch $O/DONE_design
