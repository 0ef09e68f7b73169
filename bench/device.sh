#!/usr/bin/env bash
# The GPU checks in one script, for a GPU machine lent for a few minutes (issue #16 item 4,
# #12 item 8): the GPU test, bench/model.py, the network alone per grid (bench/nowcast.py
# --network-only), a 2-process torchrun, then training the real-radar model on the GPU from a
# pack until a time budget is spent. Every part runs even if one before it failed; each part's
# figures are JSON lines in OUT, the trained run comes back as OUT/train.tgz.
#
#   bash bench/device.sh OUT PACK [TRAIN_SECONDS] [DEVICE]
#
# PACK is a training pack (`mimcast loao CUBES --stage pack`). The machine needs torch, numpy,
# scipy, xarray and safetensors only: mimcast's folders are put on the path as mimcast.*
# without installing it. PARTS (default "tests model network ddp train") picks parts; the part
# "nowcast" runs the whole bench/nowcast.py (cube -> NetCDF, beside pysteps) and needs the I/O
# stack: wheels (and sdists, built there) in .whl/ are installed first when present. The part
# "folds" trains leave-one-archive-out runs side by side on the one GPU, each its own process
# (each is launch-bound: three ran at the speed of one on an H200): FOLDS (default "final"),
# CONFIG (default data/real_cpu.toml), FOLD_STEPS / FINAL_STEPS (override max_steps), EXCLUDE
# (the final model's held-out archives, default "rmi radolan-yw"). Each run comes back as
# OUT/<fold>.tgz with its log and its resumable state: unpack into DIR/folds/<fold>/lagrangian
# (DIR/final/lagrangian) and the same `mimcast loao ... --only` command goes on from there.
# TRAIN_SECONDS (default 240; less if END_BY, epoch seconds, comes sooner) bounds the training
# part. Its number of steps is set from the step rate measured in its first seconds, so that
# the learning-rate schedule and scheduled sampling end inside the budget (data/real.toml's
# recipe scaled: scheduled sampling stops at 2/3 of the steps). DEVICE is cuda (default) or
# cpu (to try the script on a machine without a GPU). In the model part, OPENSTL (a folder
# holding the openstl package, carried along) adds OpenSTL's MIM to the timings, and COMPILE=1
# times the compiled step.
set -u
OUT=${1:?OUT}
PACK=$(realpath "${2:?PACK}")
TRAIN_S=${3:-240}
DEV=${4:-cuda}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONUNBUFFERED=1
NS=$(mktemp -d)
mkdir -p "$NS/mimcast"
for d in pipeline models flows data; do ln -s "$ROOT/$d" "$NS/mimcast/$d"; done
export PYTHONPATH="$NS${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
T0=$(date +%s)
stamp() { echo "== $(($(date +%s) - T0)) s: $*"; }
CLI="python3 -m mimcast.pipeline.cli"
NAMES=$(python3 -c "import json, sys, numpy as np
print(' '.join(json.loads(np.load(sys.argv[1])['meta'].tobytes())['cubes']))" "$PACK")

want() { [[ " ${PARTS:-tests model network ddp train} " == *" $1 "* ]]; }
within_end_by() {  # within_end_by SECONDS MARGIN: SECONDS, or less if END_BY (epoch seconds,
    local s=$1 left  # by which all must be done) minus MARGIN comes sooner
    if [ -n "${END_BY:-}" ]; then
        left=$((END_BY - $(date +%s) - $2))
        [ "$left" -lt "$s" ] && s=$left
    fi
    echo "$s"
}
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

if want tests; then
stamp "GPU tests"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_mimnet.py 2>&1 | tail -40
fi

if want model; then
stamp "bench/model.py"
AGAINST=()
if [ -n "${OPENSTL:-}" ]; then  # a folder holding the openstl package: time it alongside
    export PYTHONPATH="$PYTHONPATH:$(realpath "$OPENSTL")"
    AGAINST=(--against openstl)
fi
python3 bench/model.py --device "$DEV" --cases ${CASES:-small large} --precisions fp32 bf16 \
    --repeats 5 "${AGAINST[@]}" ${COMPILE:+--compile} 2>&1 | tee "$OUT/model.jsonl" | tail -3
fi

if want network; then
stamp "bench/nowcast.py --network-only"
for p in "" "--bf16"; do
    python3 bench/nowcast.py --network-only --devices "$DEV" --sizes ${SIZES:-256 700 1024 2048} \
        --repeats 3 $p 2>&1 | tee -a "$OUT/network.jsonl"
done
fi

if want nowcast; then
stamp "bench/nowcast.py"
if ls .whl/* > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/*.whl && python3 -m pip install -q --no-index --no-deps --no-build-isolation \
        --no-cache-dir --target /tmp/site .whl/*.tar.gz
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
for p in "" "--bf16"; do
    python3 bench/nowcast.py --devices "$DEV" --sizes ${SIZES:-256 700 1024} --repeats 2 $p \
        2>&1 | tee -a "$OUT/nowcast.jsonl"
done
fi

if want ddp; then
stamp "torchrun, 2 processes"
DDP=$(mktemp -d)
ln -s "$PACK" "$DDP/pack.npz"
python3 -m torch.distributed.run --standalone --nproc_per_node 2 -m mimcast.pipeline.cli loao \
    $NAMES --config data/real.toml --out "$DDP" --only bom-cscn/lagrangian --max-steps 20 \
    --device "$DEV" -q 2>&1 | tail -8
echo "torchrun exit: ${PIPESTATUS[0]}"
grep -c '"loss"' "$DDP/folds/bom-cscn/lagrangian/metrics.jsonl" 2>&1 | sed 's/^/loss lines: /'
tail -1 "$DDP/folds/bom-cscn/lagrangian/metrics.jsonl" 2>&1
fi

if want folds; then
FOLDS_S=$(within_end_by "$TRAIN_S" 40)
stamp "folds side by side (${FOLDS:-final}), $FOLDS_S s"
RUNS=$(mktemp -d)
ln -s "$PACK" "$RUNS/pack.npz"
PIDS=()
for f in ${FOLDS:-final}; do
    steps=${FOLD_STEPS:-}
    extra=()
    if [ "$f" = final ]; then steps=${FINAL_STEPS:-}; extra=(--exclude ${EXCLUDE:-rmi radolan-yw}); fi
    $CLI loao $NAMES --config "${CONFIG:-data/real_cpu.toml}" --out "$RUNS" --stage train \
        --only "$f/lagrangian" ${steps:+--max-steps "$steps"} --device "$DEV" \
        --deadline-s $((FOLDS_S - 30)) -q "${extra[@]}" > "$RUNS/$f.log" 2>&1 &
    PIDS+=($!)
done
wait "${PIDS[@]}"
for f in ${FOLDS:-final}; do
    dir="$RUNS/folds/$f/lagrangian"
    [ "$f" = final ] && dir="$RUNS/final/lagrangian"
    echo "$f: $(grep -c '"loss"' "$dir/metrics.jsonl" 2>/dev/null) loss lines; last validation:"
    grep '"validation"' "$dir/metrics.jsonl" 2>/dev/null | tail -1 | cut -c1-160
    tail -2 "$RUNS/$f.log"
    tar czf "$OUT/$f.tgz" -C "$dir" --exclude last.safetensors . -C "$RUNS" "$f.log"
done
fi

if want train; then
TRAIN_S=$(within_end_by "$TRAIN_S" 20)
stamp "training: final/lagrangian without rmi and radolan-yw, $TRAIN_S s"
RUN=$(mktemp -d)
ln -s "$PACK" "$RUN/pack.npz"
START=$(date +%s)
train() {  # train CONFIG: the shipped model's data (RMI and YW left out), on the GPU
    $CLI loao $NAMES --config "$1" --out "$RUN" --only final/lagrangian --exclude rmi radolan-yw \
        --device "$DEV" --deadline-s $((TRAIN_S - ($(date +%s) - START))) -q
}
train data/real.toml > "$OUT/train.log" 2>&1 &
PID=$!
METRICS="$RUN/final/lagrangian/metrics.jsonl"
logged() { n=$(grep -c '"loss"' "$METRICS" 2>/dev/null); echo "${n:-0}"; }
for _ in $(seq 1 75); do  # until step 80 is logged (every 10 steps; at most 75 s)
    sleep 1
    [ "$(logged)" -ge 9 ] && break
done
STEPS=$(python3 - "$METRICS" "$TRAIN_S" "$(($(date +%s) - START))" <<'EOF'
import json, sys
try:
    rows = [r for r in map(json.loads, open(sys.argv[1])) if "loss" in r]
except OSError:
    rows = []
budget, used = float(sys.argv[2]), float(sys.argv[3])
if len(rows) < 3:
    print(f"{len(rows)} steps logged: too few to time", file=sys.stderr)
    print(400)
    sys.exit()
a = rows[min(2, len(rows) - 2)]  # from step 20: after the first steps' warm-up
rate = (rows[-1]["step"] - a["step"]) / (rows[-1]["elapsed_s"] - a["elapsed_s"])
steps = int(rate * (budget - used - 20) * 0.85 / 8 / 50) * 50 * 8  # 8 validations, ~15 % cost
print(f"{rate:.2f} steps/s", file=sys.stderr)
print(max(min(steps, 3000), 400))
EOF
)
echo "steps: $STEPS"
if [ "$STEPS" -lt 3000 ]; then  # the recipe's 3000 do not fit: restart with a scaled schedule
    KIDS=$(pgrep -P "$PID")
    kill $KIDS "$PID"; wait "$PID" 2>/dev/null  # the run and its shell
    while kill -0 $KIDS 2>/dev/null; do sleep 0.5; done
    rm -rf "$RUN/final"
    sed -e "s/^max_steps = .*/max_steps = $STEPS/" \
        -e "s/^ss_stop_step = .*/ss_stop_step = $((STEPS * 2 / 3))/" \
        -e "s/^val_every = .*/val_every = $((STEPS / 8))/" \
        -e "s/^checkpoint_every = .*/checkpoint_every = $((STEPS / 16))/" \
        data/real.toml > "$RUN/gpu.toml"
    train "$RUN/gpu.toml" >> "$OUT/train.log" 2>&1
else
    wait "$PID"
fi
echo "training exit: $?"
grep '"validation"' "$METRICS" | tail -3
tar czf "$OUT/train.tgz" -C "$RUN/final/lagrangian" --exclude state.safetensors .
fi
stamp "done"
