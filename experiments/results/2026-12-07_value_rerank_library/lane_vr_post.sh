# after the training lanes: pooled sign tests at the shared settings, then each model tuned, then pooled tuned
D=$1   # beauty | sports
N=$2   # lines expected in the lane's .done file
cd /work/wt_bench
export PYTHONPATH=/work/wt_bench
PY=/work/venvs/py311/bin/python
O=/work/runs/vr/out
R=/work/runs/vr
while [ "$(wc -l < /work/logs/lane_vr_$D.done 2>/dev/null || echo 0)" -lt $N ]; do sleep 15; done
$PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py $D 3 $R/${D}_untrained/best_model \
  0=$R/${D}_s0/best_model 1=$R/${D}_s1/best_model 2=$R/${D}_s2/best_model --json $O/pooled_${D}_shared.json > $O/pooled_${D}_shared.log 2>&1
rc=$?
echo "pooled shared rc $rc" >> /work/logs/lane_vr_post_$D.done
for M in untrained s0 s1 s2; do
$PY -m experiments.tune --checkpoint $R/${D}_$M/best_model --grid retriever_temperature=0.07,0.3,1.0 --grid alpha=0.2,0.3 \
  --metric ndcg@10 --test --no-progress --json $O/tune_${D}_$M.json --save $R/tune/${D}_$M > $O/tune_${D}_$M.log 2>&1
rc=$?
echo "tune $M rc $rc" >> /work/logs/lane_vr_post_$D.done
done
$PY experiments/results/2026-12-06_value_windows_library/pooled_windows.py $D 3 $R/tune/${D}_untrained \
  0=$R/tune/${D}_s0 1=$R/tune/${D}_s1 2=$R/tune/${D}_s2 --json $O/pooled_${D}_tuned.json > $O/pooled_${D}_tuned.log 2>&1
rc=$?
echo "pooled tuned rc $rc" >> /work/logs/lane_vr_post_$D.done
