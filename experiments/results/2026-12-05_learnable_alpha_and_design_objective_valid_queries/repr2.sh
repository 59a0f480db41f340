cd "$(git rev-parse --show-toplevel)"
mkdir -p runs/vq3
PY=python
R=runs/vq3
B="--config experiments/configs/beauty_ftragrec.yaml --set pretrained=builtin:beauty --set data= --set retrieval_backend=exact --set show_progress=false --set retriever_queries=valid --set epochs=5"
S="--config experiments/configs/sports_ftragrec.yaml --set pretrained=builtin:sports --set retrieval_backend=exact --set show_progress=false --set retriever_queries=valid --set epochs=5"
run() { out=$1; shift; [ -f $out/done ] && return; nice $PY -m experiments.train "$@" --set output_dir=$out > $out.log 2>&1 && touch $out/done; }
cmp() { nice $PY -m experiments.compare --a $1/best_model --b $2/best_model --no-progress --json $3.json > $3.log 2>&1; }
run $R/beauty_repr_design_s2021 $B --set seed=2021
cmp $R/beauty_repr_frozen $R/beauty_repr_design_s2021 $R/cmp_repr_frozen_vs_design_s2021
run $R/sports_repr_frozen $S --set freeze_retriever=true --set seed=2020
run $R/sports_repr_design_s2020 $S --set seed=2020
cmp $R/sports_repr_frozen $R/sports_repr_design_s2020 $R/cmp_sports_repr_frozen_vs_design_s2020
run $R/beauty_repr_design_s2022 $B --set seed=2022
cmp $R/beauty_repr_frozen $R/beauty_repr_design_s2022 $R/cmp_repr_frozen_vs_design_s2022
run $R/sports_repr_design_s2021 $S --set seed=2021
cmp $R/sports_repr_frozen $R/sports_repr_design_s2021 $R/cmp_sports_repr_frozen_vs_design_s2021
