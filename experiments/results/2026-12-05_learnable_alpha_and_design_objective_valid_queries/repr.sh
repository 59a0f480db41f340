cd "$(git rev-parse --show-toplevel)"
mkdir -p runs/vq3
PY=python
B="--config experiments/configs/beauty_ftragrec.yaml --set pretrained=builtin:beauty --set data= --set retrieval_backend=exact --set show_progress=false --set retriever_queries=valid --set epochs=5 --set seed=2020"
run() { out=$1; shift; [ -f $out/done ] && return; nice $PY -m experiments.train "$@" --set output_dir=$out > $out.log 2>&1 && touch $out/done; }
run runs/vq3/beauty_repr_frozen $B --set freeze_retriever=true
run runs/vq3/beauty_repr_contrastive_s2020 $B --set retriever_objective=contrastive
run runs/vq3/beauty_repr_design_s2020 $B
R=runs/vq3
nice $PY -m experiments.compare --a $R/beauty_repr_frozen/best_model --b $R/beauty_repr_contrastive_s2020/best_model --no-progress --json $R/cmp_repr_frozen_vs_contrastive.json > $R/cmp4.log 2>&1
nice $PY -m experiments.compare --a $R/beauty_repr_frozen/best_model --b $R/beauty_repr_design_s2020/best_model --no-progress --json $R/cmp_repr_frozen_vs_design.json > $R/cmp5.log 2>&1
