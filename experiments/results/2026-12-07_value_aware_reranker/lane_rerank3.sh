#!/bin/bash
# the same runs again with the script that also saves the fixed-beta ranks (and shows the runs repeat exactly)
cd /work/main
P=/work/venvs/py311/bin/python
until grep -q "sports 2 rc" /work/logs/lane_rerank2.out; do sleep 20; done
for s in 0 1 2; do
  nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Beauty.txt builtin:beauty /work/screen/v2_rerank_beauty_p300_s${s}_lr3e-4.json 300 $s 3e-4 > /work/logs/v2_rerank_beauty_s${s}.log 2>&1
  rc=$?
  echo "beauty $s rc $rc"; date
done
nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Sports_and_Outdoors.txt builtin:sports /work/screen/v2_rerank_sports_p300_s0_lr3e-4.json 300 0 3e-4 > /work/logs/v2_rerank_sports_s0.log 2>&1
rc=$?
echo "sports 0 rc $rc"; date
