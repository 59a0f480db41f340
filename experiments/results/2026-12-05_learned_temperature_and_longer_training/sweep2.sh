#!/bin/bash
while [ ! -f /work/runs/temp/DONE ]; do sleep 30; done
cd /work/wt_head
PY=/work/venvs/py311/bin/python
for m in obj/frozen_g vq2/beauty_contrastive_s2020 sobj/frozen_g vq2/sports_contrastive_s2020; do
  out=/work/runs/temp/$(echo $m | tr / _)_T0.07.json
  [ -f $out ] && continue
  nice -n 19 $PY -m experiments.evaluate --checkpoint /work/runs/$m/best_model --no-progress --json $out > $out.log 2>&1
done
touch /work/runs/temp/DONE2
