#!/bin/bash
# Session 7 (#25): the contrastive g trained at the temperature validation picks for the untrained g (0.3),
# compared with the untrained g at that temperature; the untrained g's sweep extended beyond 0.3.
cd /work/wt_s7
PY=/work/venvs/py311/bin/python
O=/work/runs/s7
S="experiments/configs/sports_ftragrec_knn_lm.yaml --set pretrained=builtin:sports"
B="experiments/configs/quickstart.yaml"
run() { name=$1; cfg=$2; shift 2; [ -f $O/$name/results.json ] && return; rm -rf $O/$name; nice -n 5 $PY -m experiments.train --config $cfg --set show_progress=false --set output_dir=$O/$name --set retriever_queries=valid --set epochs=5 "$@" > $O/$name.log 2>&1; echo "$(date +%T) $name rc=$?" >> $O/QUEUE.log; }
cmpT() { a=$1; b=$2; T=$3; out=$4; [ -f $out ] || nice -n 5 $PY -m experiments.compare --a $a/best_model --b $b/best_model --set-a retriever_temperature=$T --no-progress --json $out > $out.log 2>&1; echo "$(date +%T) $out rc=$?" >> $O/QUEUE.log; }
evalT() { m=$1; T=$2; out=$O/$(echo $m | tr / _)_T$T.json; [ -f $out ] || nice -n 5 $PY -m experiments.evaluate --checkpoint /work/runs/$m/best_model --no-progress --json $out --set retriever_temperature=$T > $out.log 2>&1; echo "$(date +%T) $out rc=$?" >> $O/QUEUE.log; }
run beauty_contrastive_T03_s2020 $B --set retriever_objective=contrastive --set retriever_temperature=0.3 --set seed=2020
cmpT /work/runs/obj/frozen_g $O/beauty_contrastive_T03_s2020 0.3 $O/cmp_beauty_T03_s2020.json
evalT obj/frozen_g 0.6
run sports_contrastive_T03_s2020 $S --set retriever_objective=contrastive --set retriever_temperature=0.3 --set seed=2020
cmpT /work/runs/sobj/frozen_g $O/sports_contrastive_T03_s2020 0.3 $O/cmp_sports_T03_s2020.json
evalT sobj/frozen_g 0.6
evalT obj/frozen_g 1.0
evalT sobj/frozen_g 1.0
touch $O/DONE
