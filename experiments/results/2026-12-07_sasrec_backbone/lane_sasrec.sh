#!/bin/bash
cd /work/wt_s17
export PYTHONPATH=/work/wt_s17
date
nice -n 5 /work/venvs/py311/bin/python -m experiments.train --config experiments/configs/sasrec.yaml --set show_progress=false --set output_dir=/work/runs/s17/sasrec_beauty > /work/runs/s17/sasrec_beauty.log 2>&1
rc=$?
echo "sasrec rc $rc"; date
