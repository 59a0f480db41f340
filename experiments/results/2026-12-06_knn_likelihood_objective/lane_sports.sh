#!/bin/bash
# sports: g trained with the knn_likelihood objective (value windows of 3 in the loss and in the objective's votes;
# validation queries, 5 epochs, seeds 2020-2022), against the same configuration with g untrained (frozen-g model at
# m = 3, T 0.07, alpha 0.2); then each trained g tuned over temperature and alpha at m = 3 on the held-out half and
# compared with the untrained g tuned the same way (runs/s11/tune/sports_untrained_m3).
cd /work/wt_s12
export PYTHONPATH=/work/wt_s12
PY=/work/venvs/py311/bin/python
O=/work/runs/s12
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
for s in 2020 2021 2022; do
  name=sports_knnlik_win3_s$s
  [ -f $O/$name/results.json ] || nice -n 5 $PY -m experiments.train --config experiments/configs/sports_ftragrec_knn_lm.yaml \
    --set pretrained=builtin:sports --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set retriever_objective=knn_likelihood --set epochs=5 --set seed=$s --set output_dir=$O/$name > $O/$name.log 2>&1
  rc=$?; echo "$(date +%T) train $name rc=$rc" >> $O/QUEUE_sports.log
done
nice -n 5 $PY $S sports 3 /work/runs/s8/sports_frozen_g/best_model 2020=$O/sports_knnlik_win3_s2020/best_model \
  2021=$O/sports_knnlik_win3_s2021/best_model 2022=$O/sports_knnlik_win3_s2022/best_model \
   --json $O/pooled_sports_knnlik_m3.json > $O/pooled_sports_knnlik_m3.log 2>&1
rc=$?; echo "$(date +%T) pooled sports knnlik m3 rc=$rc" >> $O/QUEUE_sports.log
tune() {  # name checkpoint
  nice -n 5 $PY -m experiments.tune --checkpoint $2 --grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 \
    --grid knn_value_window=3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress \
    --json $O/tune/$1.json --save $O/tune/$1 > $O/tune/$1.log 2>&1
  rc=$?; echo "$(date +%T) tune $1 rc=$rc" >> $O/QUEUE_sports.log
}
for s in 2020 2021 2022; do tune sports_knnlik_win3_s$s $O/sports_knnlik_win3_s$s/best_model; done
nice -n 5 $PY $S sports 3 /work/runs/s11/tune/sports_untrained_m3 2020=$O/tune/sports_knnlik_win3_s2020 \
  2021=$O/tune/sports_knnlik_win3_s2021 2022=$O/tune/sports_knnlik_win3_s2022 \
   --json $O/pooled_sports_knnlik_m3_tuned.json > $O/pooled_sports_knnlik_m3_tuned.log 2>&1
rc=$?; echo "$(date +%T) pooled sports knnlik m3 tuned rc=$rc" >> $O/QUEUE_sports.log
touch $O/DONE_sports
