#!/bin/bash
# Beauty: g trained by the design's terms with kNN-LM value windows of 3 in its loss (validation queries, 5 epochs,
# seeds 2020-2022), against the same configuration with g untrained (beauty_frozen_g at m = 3); then every model
# tuned over temperature and alpha at m = 3 on the held-out half, and the tuned models compared.
cd /work/wt_s11
export PYTHONPATH=/work/wt_s11
PY=/work/venvs/py311/bin/python
O=/work/runs/s11
S8=/work/runs/s8
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
# The two pooled calls first ran without --data and stopped at the dataset check (beauty_frozen_g stores the embedded
# copy "", these runs ../shared's path; same bytes once unzipped); both were rerun by hand from /work/main with
# --data as written below (queue_s11.log has the failed attempts' times).
D="--data /work/shared/data/amazon/Beauty.txt"
for s in 2020 2021 2022; do
  name=beauty_design_win3_s$s
  [ -f $O/$name/results.json ] || nice -n 5 $PY -m experiments.train --config experiments/configs/beauty_ftragrec_knn_lm.yaml \
    --set pretrained=builtin:beauty --set show_progress=false --set retriever_queries=valid --set knn_value_window=3 \
    --set epochs=5 --set seed=$s --set output_dir=$O/$name > $O/$name.log 2>&1
  echo "$(date +%T) train $name rc=$?" >> $O/QUEUE_A.log
done
nice -n 5 $PY $S beauty 3 $S8/beauty_frozen_g/best_model 2020=$O/beauty_design_win3_s2020/best_model \
  2021=$O/beauty_design_win3_s2021/best_model 2022=$O/beauty_design_win3_s2022/best_model \
  $D --json $O/pooled_beauty_design_m3.json > $O/pooled_beauty_design_m3.log 2>&1
echo "$(date +%T) pooled beauty design m3 rc=$?" >> $O/QUEUE_A.log
tune() {  # name checkpoint
  nice -n 5 $PY -m experiments.tune --checkpoint $2 --grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 \
    --grid knn_value_window=3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress \
    --json $O/tune/$1.json --save $O/tune/$1 > $O/tune/$1.log 2>&1
  echo "$(date +%T) tune $1 rc=$?" >> $O/QUEUE_A.log
}
tune beauty_untrained_m3 $S8/beauty_frozen_g/best_model
for s in 2020 2021 2022; do tune beauty_design_win3_s$s $O/beauty_design_win3_s$s/best_model; done
nice -n 5 $PY $S beauty 3 $O/tune/beauty_untrained_m3 2020=$O/tune/beauty_design_win3_s2020 \
  2021=$O/tune/beauty_design_win3_s2021 2022=$O/tune/beauty_design_win3_s2022 \
  $D --json $O/pooled_beauty_design_m3_tuned.json > $O/pooled_beauty_design_m3_tuned.log 2>&1
echo "$(date +%T) pooled beauty design m3 tuned rc=$?" >> $O/QUEUE_A.log
touch $O/DONE_A
