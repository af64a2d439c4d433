#!/usr/bin/env bash
# Serving cost of a `dmirec fit` recipe against its backbone REMI + neighbour rule, with the
# interest bank searched exactly or by HNSW: per request in-process, over HTTP at 20 and 100
# requests/s (each rate three times), and batch candidates for every user of the log.
#
#   scripts/bench_recipe_serving.sh FIT_DIR FIT_HNSW_DIR LOG [BUNDLES_DIR]
#
# FIT_DIR: the output folder of `dmirec fit LOG --out FIT_DIR` (e.g. `python scripts/bench_fit.py
# beauty`); FIT_HNSW_DIR: the same fit with `--bank_search=hnsw` (`python scripts/bench_fit.py beauty
# --set bank_search=hnsw`). The backbone alone is exported twice from FIT_DIR with the rule the
# fit chose (`--recipe none`, exact and HNSW bank). Run it on an otherwise idle machine: the
# server is pinned to CPU 1 and the load generator to CPU 0. Records: bench_results/
# serve-recipe-idle.json, request.json and batch.json (docs/recipes.md, "Serving cost").
set -euo pipefail
fit=${1:?FIT_DIR}; fit_hnsw=${2:?FIT_HNSW_DIR}; log=${3:?LOG}; bundles=${4:-bundles/recipe-serving}
here=$(cd "$(dirname "$0")/.." && pwd)
py="$here/.venv/bin/python"
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$bundles"

rule=$("$py" -c "import sys, yaml; r = yaml.safe_load(open(sys.argv[1]))['neighbour_rule']; \
print(f\"--neighbour_alpha={r['neighbour_alpha']} --neighbours={r['neighbours']}\")" "$fit/recipe.yaml")
# shellcheck disable=SC2086  # $rule is two flags
"$py" -m dmirec export "$fit/backbone" "$bundles/beauty-remi-rule-exact" --recipe none --overwrite $rule
# shellcheck disable=SC2086
"$py" -m dmirec export "$fit/backbone" "$bundles/beauty-remi-rule-hnsw-bank" --recipe none --overwrite $rule \
    --bank_search=hnsw
ln -sfn "$(cd "$fit/bundle" && pwd)" "$bundles/beauty-fit-recipe"
ln -sfn "$(cd "$fit_hnsw/bundle" && pwd)" "$bundles/beauty-fit-recipe-hnsw-bank"

names=(beauty-remi-rule-exact beauty-remi-rule-hnsw-bank beauty-fit-recipe beauty-fit-recipe-hnsw-bank)
for name in "${names[@]}"; do
    "$py" "$here/scripts/bench_serve.py" "$bundles/$name" --rates 20,100 --repeat 3 --duration 15 --pin \
        --label "$name" --out "$here/bench_results/serve-recipe-idle.json"
done
"$py" "$here/scripts/bench_request.py" "${names[@]/#/$bundles/}"
for name in "${names[@]}"; do
    "$py" "$here/scripts/bench_batch.py" "$bundles/$name" --input "$log" --label "$name"
done
