#!/bin/bash
# Beauty, seed 2020, screens of two untried knobs of knn_likelihood (windows 3, validation queries, 5 epochs),
# judged on the held-out validation half against the same run at the defaults (runs/s12/beauty_knnlik_win3_s2020):
#   w5:    retriever_loss_weight=5 (the objective dominates the design's terms in g's gradient)
#   p500:  retriever_pool=500 (a wider pool for the objective; the fused top 50 unchanged)
cd /work/wt_s13  # a git worktree at be0fa0c (the library of 0b2ae38, refactored without change of behaviour)
export PYTHONPATH=/work/wt_s13
PY=/work/venvs/py311/bin/python
O=/work/runs/s13
run() {  # name extra-args...
  name=$1; shift
  [ -f $O/$name/results.json ] || nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml \
    --set pretrained=builtin:beauty --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set retriever_objective=knn_likelihood --set epochs=5 --set seed=2020 "$@" --set output_dir=$O/$name > $O/$name.log 2>&1
  rc=$?; echo "$(date +%T) train $name rc=$rc" >> $O/QUEUE_screen.log
}
run beauty_knnlik_win3_w5_s2020 --set retriever_loss_weight=5 &
run beauty_knnlik_win3_p500_s2020 --set retriever_pool=500 &
wait
