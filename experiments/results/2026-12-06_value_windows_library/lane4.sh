#!/bin/bash
# After lane.sh: trained (contrastive, 3 seeds, tuned T/alpha) vs untrained g, both with windows of 3 items.
cd /work/wt_s10b
export PYTHONPATH=/work/wt_s10b
PY=/work/venvs/py311/bin/python
O=/work/runs/s10
S8=/work/runs/s8
while [ ! -f $O/DONE ]; do sleep 30; done
S=experiments/results/2026-12-06_value_windows_library/pooled_windows.py
# untrained at its earlier choices (Sports T 0.6 alpha 0.2, Beauty T 1.0 alpha 0.3): the tuned copies hold them
for ds in sports beauty; do
  nice -n 5 $PY $S $ds 3 $S8/tune/${ds}_untrained_wide 2020=$S8/tune/${ds}_contrastive_s2020 2021=$S8/tune/${ds}_contrastive_s2021 \
    2022=$S8/tune/${ds}_contrastive_s2022 --json $O/pooled_${ds}_m3.json > $O/pooled_${ds}_m3.log 2>&1
  echo "$(date +%T) pooled $ds m3 rc=$?" >> $O/QUEUE4.log
done
touch $O/DONE4
