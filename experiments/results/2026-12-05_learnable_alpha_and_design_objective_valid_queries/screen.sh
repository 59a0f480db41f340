# screens on Beauty seed 2020: learnable alpha jointly with g, and the design objective on validation queries
cd "$(git rev-parse --show-toplevel)"
PY=python
mkdir -p runs/vq3
B="--config experiments/configs/quickstart.yaml --set show_progress=false --set retriever_queries=valid --set epochs=5"
run() { out=$1; shift; [ -f $out/done ] && return; nice $PY -m experiments.train "$@" --set output_dir=$out > $out.log 2>&1 && touch $out/done; }
run runs/vq3/beauty_frozen_la $B --set learnable_alpha=true --set freeze_retriever=true --set seed=2020
run runs/vq3/beauty_contrastive_la_s2020 $B --set learnable_alpha=true --set retriever_objective=contrastive --set seed=2020
run runs/vq3/beauty_design_s2020 $B --set seed=2020
run runs/vq3/beauty_design_la_s2020 $B --set learnable_alpha=true --set seed=2020
