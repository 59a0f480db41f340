#!/bin/bash
# Beauty: g fitted on the 44,726 training samples the backbone never trained on (retriever_queries=held_out, backbone
# pretrained with pretrain_holdout_last=2), knn_likelihood with value windows of 3 as in 2026-12-06_knn_likelihood_objective
# (there: validation queries, 5 epochs; here 3 epochs, each 4x the queries), against the same configuration with g
# untrained (freeze_retriever) on the same backbone, and g fitted on validation queries on the same backbone (control).
cd /work/wt_hold  # a git worktree at 6e2be5e
export PYTHONPATH=/work/wt_hold
PY=/work/venvs/py311/bin/python
O=/work/runs/s15
B=$O/beauty-duorec-hold2-s2020/best_model
while [ ! -f $O/backbone_hold2.rc ]; do sleep 30; done
run() {  # name extra-args...
  name=$1; shift
  [ -f $O/$name/results.json ] || nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml \
    --set pretrained=$B --set show_progress=false --set knn_value_window=3 \
    --set retriever_objective=knn_likelihood --set seed=2020 "$@" --set output_dir=$O/$name > $O/$name.log 2>&1
  rc=$?
  echo "$(date +%T) train $name rc=$rc" >> $O/QUEUE.log
}
run hold2_untrained --set freeze_retriever=true --set retriever_queries=held_out --set epochs=1 &
run hold2_knnlik_s2020 --set retriever_queries=held_out --set epochs=3 &
wait
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
pooled() {  # name seed=dir...
  name=$1; shift
  nice -n 5 $PY $S beauty 3 $O/hold2_untrained/best_model "$@" \
    --data /work/shared/data/amazon/Beauty.txt --json $O/$name.json > $O/$name.log 2>&1
  rc=$?
  echo "$(date +%T) $name rc=$rc" >> $O/QUEUE.log
}
pooled pooled_hold2_s2020 2020=$O/hold2_knnlik_s2020/best_model
run hold2_knnlik_s2021 --set retriever_queries=held_out --set epochs=3 --set seed=2021 &
run hold2_knnlik_valid_s2020 --set retriever_queries=valid --set epochs=5 &
wait
pooled pooled_hold2_valid_s2020 2020=$O/hold2_knnlik_valid_s2020/best_model &
run hold2_knnlik_s2022 --set retriever_queries=held_out --set epochs=3 --set seed=2022
wait
pooled pooled_hold2 2020=$O/hold2_knnlik_s2020/best_model 2021=$O/hold2_knnlik_s2021/best_model \
  2022=$O/hold2_knnlik_s2022/best_model
touch $O/DONE
