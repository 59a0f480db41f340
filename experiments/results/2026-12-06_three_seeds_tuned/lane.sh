#!/bin/bash
# Session 8 (#25): seeds 2021/2022 of the contrastive, validation-query g tuned on the same held-out validation
# users and grid as seed 2020, compared paired with the untrained g at its own chosen settings.
# usage: lane.sh beauty|sports
cd /work/wt_s8
PY=/work/venvs/py311/bin/python
O=/work/runs/s8
ds=$1
if [ $ds = beauty ]; then CFG="experiments/configs/quickstart.yaml"; UT=1.0; UA=0.3;
else CFG="experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=builtin:sports"; UT=0.6; UA=0.2; fi
log() { echo "$(date +%T) $*" >> $O/QUEUE.log; }
train() { name=$1; shift; [ -f $O/$name/results.json ] && return; rm -rf $O/$name; nice -n 5 $PY -m experiments.train --config $CFG --set show_progress=false --set output_dir=$O/$name "$@" > $O/$name.log 2>&1; log "train $name rc=$?"; }
G="--grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress"
tune() { name=$1; m=$2; [ -f $O/tune/$name.json ] || nice -n 5 $PY -m experiments.tune --checkpoint $O/$m/best_model $G --json $O/tune/$name.json --save $O/tune/$name > $O/tune/$name.log 2>&1; log "tune $name rc=$?"; }
cmp() { out=$O/tune/cmp_$1.json; [ -f $out ] || nice -n 5 $PY -m experiments.compare --a $O/${ds}_frozen_g/best_model --set-a retriever_temperature=$UT --set-a alpha=$UA --b $O/tune/$2 --no-progress --json $out > $out.log 2>&1; log "cmp $1 rc=$?"; }
mkdir -p $O/tune
train ${ds}_frozen_g --set freeze_retriever=true
for s in 2021 2022; do
  train ${ds}_contrastive_s$s --set retriever_queries=valid --set retriever_objective=contrastive --set epochs=5 --set seed=$s
done
for s in 2021 2022; do
  tune ${ds}_contrastive_s$s ${ds}_contrastive_s$s
  cmp ${ds}_s$s ${ds}_contrastive_s$s
done
touch $O/DONE_$ds
