cd /work/wt_bench
export PYTHONPATH=/work/wt_bench
PY=/work/venvs/py311/bin/python
C=experiments/configs/sports_ftragrec_value_rerank.yaml
$PY -m experiments.train --config $C --set pretrained=builtin:sports --set show_progress=false --set value_rerank=false --set epochs=1 --set seed=0 --set output_dir=/work/runs/vr/sports_untrained > /work/logs/vr_sports_untrained.log 2>&1
rc=$?
echo "untrained rc $rc" >> /work/logs/lane_vr_sports.done
for S in 0 1 2; do
$PY -m experiments.train --config $C --set pretrained=builtin:sports --set show_progress=false --set seed=$S --set output_dir=/work/runs/vr/sports_s$S > /work/logs/vr_sports_s$S.log 2>&1
rc=$?
echo "s$S rc $rc" >> /work/logs/lane_vr_sports.done
done
