#!/bin/bash
# After lane.sh: seed 2020 retrained (the earlier session's run folders are gone; same command), stored at the
# settings the earlier tuning chose for it (one-point grid: evaluates and saves), then pooled.py.
cd /work/wt_s8
PY=/work/venvs/py311/bin/python
O=/work/runs/s8
R=/work/main/experiments/results/2026-12-06_three_seeds_tuned
ds=$1
while [ ! -f $O/DONE_$ds ]; do sleep 30; done
if [ $ds = beauty ]; then CFG="experiments/configs/quickstart.yaml"; UT=1.0; UA=0.3; T0=0.6; A0=0.3;
else CFG="experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=builtin:sports"; UT=0.6; UA=0.2; T0=0.3; A0=0.2; fi
log() { echo "$(date +%T) $*" >> $O/QUEUE.log; }
name=${ds}_contrastive_s2020
if [ ! -f $O/$name/results.json ]; then rm -rf $O/$name; nice -n 5 $PY -m experiments.train --config $CFG --set show_progress=false --set output_dir=$O/$name --set retriever_queries=valid --set retriever_objective=contrastive --set epochs=5 --set seed=2020 > $O/$name.log 2>&1; log "train $name rc=$?"; fi
[ -f $O/tune/$name.json ] || nice -n 5 $PY -m experiments.tune --checkpoint $O/$name/best_model --grid retriever_temperature=$T0 --grid alpha=$A0 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress --json $O/tune/$name.json --save $O/tune/$name > $O/tune/$name.log 2>&1; log "tune1 $name rc=$?"
nice -n 5 $PY $R/pooled.py $ds $O/${ds}_frozen_g/best_model $UT $UA 2020=$O/tune/${ds}_contrastive_s2020 2021=$O/tune/${ds}_contrastive_s2021 2022=$O/tune/${ds}_contrastive_s2022 --out $O/ranks_$ds.npz --json $O/pooled_$ds.json > $O/pooled_$ds.log 2>&1; log "pooled $ds rc=$?"
touch $O/DONE2_$ds
