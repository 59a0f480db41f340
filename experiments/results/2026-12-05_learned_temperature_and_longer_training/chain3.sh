#!/bin/bash
# trained vs untrained g (contrastive, validation queries, seed 2020) with both evaluated at temperature 0.15
cd /work/wt_lt
PY=/work/venvs/py311/bin/python
c() { [ -f $3 ] || nice -n 5 $PY -m experiments.compare --a $1 --b $2 --set-a retriever_temperature=0.15 --set-b retriever_temperature=0.15 --no-progress --json $3 > $3.log 2>&1; }
c /work/runs/sobj/frozen_g/best_model /work/runs/vq2/sports_contrastive_s2020/best_model /work/runs/lt/cmpT015_sports_contrastive_s2020.json
c /work/runs/obj/frozen_g/best_model /work/runs/vq2/beauty_contrastive_s2020/best_model /work/runs/lt/cmpT015_beauty_contrastive_s2020.json
touch /work/runs/lt/DONE3
