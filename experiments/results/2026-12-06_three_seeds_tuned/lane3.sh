#!/bin/bash
# After lane2.sh: the untrained g's grid widened past the edges the 8-point grid chose (Beauty T 1.0 / alpha 0.3,
# Sports alpha 0.2), with top_k 100 beside 50, on the same held-out validation users.
cd /work/wt_s8
PY=/work/venvs/py311/bin/python
O=/work/runs/s8
ds=$1
while [ ! -f $O/DONE2_$ds ]; do sleep 30; done
if [ $ds = beauty ]; then G="--grid retriever_temperature=0.6,1.0,2.0 --grid alpha=0.3,0.4 --grid top_k=50,100";
else G="--grid retriever_temperature=0.6,1.0 --grid alpha=0.1,0.15,0.2 --grid top_k=50,100"; fi
name=${ds}_untrained_wide
[ -f $O/tune/$name.json ] || nice -n 5 $PY -m experiments.tune --checkpoint $O/${ds}_frozen_g/best_model $G --metric ndcg@10 --valid-holdout 0.5 --test --no-progress --json $O/tune/$name.json --save $O/tune/$name > $O/tune/$name.log 2>&1
echo "$(date +%T) tune $name rc=$?" >> $O/QUEUE.log
touch $O/DONE3_$ds
