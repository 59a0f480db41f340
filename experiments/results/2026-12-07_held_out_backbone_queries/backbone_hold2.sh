#!/bin/bash
# Beauty DuoRec, DuoRec defaults, seed 2020, each user's last 2 training samples held out. Resumable: rerun.
cd /work/wt_hold
PYTHONPATH=/work/wt_hold nice -n 19 /work/venvs/py311/bin/python -m experiments.train \
  --config experiments/configs/beauty_duorec.yaml --set data= --set seed=2020 --set pretrain_holdout_last=2 \
  --set show_progress=false --set output_dir=/work/runs/s15/beauty-duorec-hold2-s2020
rc=$?
echo "rc=$rc $(date -u)" >> /work/runs/s15/backbone_hold2.rc
