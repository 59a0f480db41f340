#!/bin/bash
# evaluation-time temperature sweep of the untrained and the contrastive-trained g (kNN-LM, Beauty / Sports, seed 2020)
cd /work/wt_head
PY=/work/venvs/py311/bin/python
for T in 0.03 0.15 0.3; do
  for m in obj/frozen_g vq2/beauty_contrastive_s2020 sobj/frozen_g vq2/sports_contrastive_s2020; do
    out=/work/runs/temp/$(echo $m | tr / _)_T$T.json
    [ -f $out ] && continue
    nice -n 19 $PY -m experiments.evaluate --checkpoint /work/runs/$m/best_model --no-progress --json $out --set retriever_temperature=$T > $out.log 2>&1
  done
done
touch /work/runs/temp/DONE
