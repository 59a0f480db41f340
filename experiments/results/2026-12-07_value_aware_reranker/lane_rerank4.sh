#!/bin/bash
# two variants on Beauty seed 0: W replaced by one learned scale; a pool of 200 (the library's retriever_pool default)
cd /work/main
P=/work/venvs/py311/bin/python
until grep -q "sports 0 rc" /work/logs/lane_rerank3.out; do sleep 20; done
nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Beauty.txt builtin:beauty /work/screen/rerank_beauty_p300_s0_lr3e-4_scalar.json 300 0 3e-4 scalar > /work/logs/rerank_beauty_s0_scalar.log 2>&1 &
nice -n 5 $P /work/screen/rerank_proto.py /work/shared/data/amazon/Beauty.txt builtin:beauty /work/screen/rerank_beauty_p200_s0_lr3e-4.json 200 0 3e-4 > /work/logs/rerank_beauty_s0_p200.log 2>&1
rc=$?
echo "p200 rc $rc"; date
wait
echo "scalar done"; date
