#!/bin/bash
cd /work/main
P=/work/venvs/py311/bin/python
for cfg in "1 3e-4" "2 3e-4" "0 3e-4"; do
  set -- $cfg
  nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Beauty.txt builtin:beauty /work/screen/rerank_beauty_p300_s$1_lr$2.json 300 $1 $2 > /work/logs/rerank_beauty_s$1_lr$2.log 2>&1
  rc=$?
  echo "beauty $1 $2 rc $rc"; date
done
nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Sports_and_Outdoors.txt builtin:sports /work/screen/rerank_sports_p300_s0_lr3e-4.json 300 0 3e-4 > /work/logs/rerank_sports_s0.log 2>&1
rc=$?
echo "sports rc $rc"; date
