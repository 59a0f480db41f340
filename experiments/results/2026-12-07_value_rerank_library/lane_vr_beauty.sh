cd /work/wt_bench
export PYTHONPATH=/work/wt_bench
PY=/work/venvs/py311/bin/python
C=experiments/configs/beauty_ftragrec_value_rerank.yaml
while [ ! -f /work/logs/vr_beauty_s0.rc ]; do sleep 10; done
$PY -m experiments.train --config $C --set pretrained=builtin:beauty --set show_progress=false --set value_rerank=false --set epochs=1 --set seed=0 --set output_dir=/work/runs/vr/beauty_untrained > /work/logs/vr_beauty_untrained.log 2>&1
rc=$?
echo "untrained rc $rc" >> /work/logs/lane_vr_beauty.done
for S in 1 2; do
$PY -m experiments.train --config $C --set pretrained=builtin:beauty --set show_progress=false --set seed=$S --set output_dir=/work/runs/vr/beauty_s$S > /work/logs/vr_beauty_s$S.log 2>&1
rc=$?
echo "s$S rc $rc" >> /work/logs/lane_vr_beauty.done
done
