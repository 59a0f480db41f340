#!/bin/bash
cd /work/main
P=/work/venvs/py311/bin/python
until grep -q "sports rc" /work/logs/lane_rerank.out; do sleep 20; done
for s in 1 2; do
  nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Sports_and_Outdoors.txt builtin:sports /work/screen/rerank_sports_p300_s${s}_lr3e-4.json 300 $s 3e-4 > /work/logs/rerank_sports_s${s}.log 2>&1
  rc=$?
  echo "sports $s rc $rc"; date
done
