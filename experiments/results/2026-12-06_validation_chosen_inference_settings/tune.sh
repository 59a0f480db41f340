#!/bin/bash
# Each retriever at its own validation-chosen temperature and alpha (experiments.tune, the same held-out 0.5
# share of validation users for the trained and the untrained g), then paired test comparison of the choices.
cd /work/wt_s7b
PY=/work/venvs/py311/bin/python
O=/work/runs/s7/tune
mkdir -p $O
G="--grid retriever_temperature=0.07,0.3,0.6,1.0 --grid alpha=0.2,0.3 --metric ndcg@10 --valid-holdout 0.5 --test --no-progress"
t() { name=$1; m=$2; [ -f $O/$name.json ] || nice -n 5 $PY -m experiments.tune --checkpoint /work/runs/$m/best_model $G --json $O/$name.json --save $O/$name > $O/$name.log 2>&1; echo "$(date +%T) tune $name rc=$?" >> $O/QUEUE.log; }
c() { out=$O/cmp_$1.json; [ -f $out ] || nice -n 5 $PY -m experiments.compare --a $O/$2 --b $O/$3 --no-progress --json $out > $out.log 2>&1; echo "$(date +%T) cmp $1 rc=$?" >> $O/QUEUE.log; }
t beauty_untrained obj/frozen_g
t beauty_contrastive_s2020 vq2/beauty_contrastive_s2020
c beauty_s2020 beauty_untrained beauty_contrastive_s2020
t sports_untrained sobj/frozen_g
t sports_contrastive_s2020 vq2/sports_contrastive_s2020
c sports_s2020 sports_untrained sports_contrastive_s2020
touch $O/DONE
