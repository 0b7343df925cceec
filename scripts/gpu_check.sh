#!/usr/bin/env bash
# One prepared check of distill on an accelerator, short enough for one device session (< 8 min on one
# GPU): one short epoch each of fashion_mnist/kd, fashion_mnist/crd and scenes/kd (when ultralytics is
# importable) in bf16 and fp16 with torch.compile and channels_last, a two-process DDP run when more than
# one GPU is present (two gloo processes with --device cpu), and benchmarks/throughput.py on the device. It writes a Markdown summary: the card,
# torch/CUDA versions, and per run its status, wall time, final top-1 (or the task's primary metric) and
# samples/s. Teachers are random (teacher.weights=null): the check is that each path runs, not accuracy.
#
#   bash scripts/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR] [--summary FILE] [--data DIR]
#                             [--wheels DIR] [--no-install]
#
# --device cpu --tiny is the same script at a few hundred samples in bf16 without compile (the test
# tests/test_gpu_check.py runs it, so it cannot rot). On a machine without a package index, prepare the
# missing wheels and the data here first: scripts/gpu_wheels.sh (writes gpu_wheels/ and gpu_data/, both
# gitignored), then carry them with the tree. Without --no-install the script installs those wheels for
# modules that do not import and distill itself with `pip install --no-deps -e .`; src/ goes first on
# PYTHONPATH either way. The exit status is 1 when any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=cuda
TINY=0
INSTALL=1
OUT_DIR=${OUT:-gpu_check_out}
SUMMARY=
DATA=${DISTILL_DATA:-}
WHEELS=gpu_wheels
PYTHON=${PYTHON:-python3}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}  # seconds one run may take before it is stopped and listed as failed
usage() { sed -n '9,10p' "$0" | sed 's/^# *//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --tiny) TINY=1; shift ;;
        --out) OUT_DIR=$2; shift 2 ;;
        --summary) SUMMARY=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "error: unknown option $1; use one of: $(usage)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda | cpu) ;; *) echo "error: --device $DEVICE is not known; use cuda or cpu" >&2; exit 2 ;; esac
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
SUMMARY=${SUMMARY:-$OUT_DIR/gpu_check.md}
if [ -z "$DATA" ] && [ -d gpu_data/fashion-mnist ]; then DATA=$ROOT/gpu_data; fi
if [ -n "$DATA" ]; then export DISTILL_DATA=$DATA; fi
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export MPLBACKEND=Agg
RESULTS=$OUT_DIR/results.tsv  # name, status, wall s, run dir
: >"$RESULTS"

if [ "$INSTALL" = 1 ]; then
    for pair in pydantic:pydantic matplotlib:matplotlib; do
        module=${pair%%:*}; package=${pair#*:}
        if ! "$PYTHON" -c "import $module" 2>/dev/null; then
            echo "install: $package from $WHEELS"
            "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" "$package" \
                || echo "install: $package failed (run PY_VERSIONS=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])') scripts/gpu_wheels.sh beforehand and carry $WHEELS)"
        fi
    done
    "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . \
        || echo "install: pip install -e . failed; running from src/ on PYTHONPATH"
fi

if [ "$TINY" = 1 ]; then
    SIZES=(data.train_subset=256 data.test_subset=128 train.max_steps=3 train.batch_size=64)
    SCENES=(data.options.train_images=16 data.options.val_images=8 train.max_steps=2)
    BENCH=(--steps 2 --repeats 1 --batch-size 64 --cached-subset 512)
else
    SIZES=(data.train_subset=10000 data.test_subset=2000 train.batch_size=256)
    SCENES=(data.options.train_images=256 data.options.val_images=64)
    BENCH=(--steps 40 --repeats 3 --batch-size 256)
fi
if [ "$DEVICE" = cuda ]; then
    PRECISIONS=(bf16 fp16)
    FAST=(train.compile=true train.channels_last=true)
else  # CPU autocast is bf16 only, and compiling for seconds-long runs would dominate them
    PRECISIONS=(bf16)
    FAST=(train.compile=false train.channels_last=true)
fi
COMMON=(teacher.weights=null train.epochs=1 "train.device=$DEVICE" train.progress=false train.log_every=1)

# run NAME COMMAND...: time it, log it, record its status
run() {
    local name=$1; shift
    local start end status rc
    echo "== $name"
    start=$(date +%s%N)
    timeout "$RUN_TIMEOUT" "$@" >"$OUT_DIR/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124) status="failed (over $RUN_TIMEOUT s)" ;;
        *) status="failed (exit $rc)" ;;
    esac
    end=$(date +%s%N)
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(awk "BEGIN {printf \"%.1f\", ($end - $start) / 1e9}")" \
        "$OUT_DIR/$name" >>"$RESULTS"
    echo "   $status (log: $OUT_DIR/$name.log)"
    [ "$status" = ok ] || tail -5 "$OUT_DIR/$name.log"
}

train() {  # train NAME RECIPE OVERRIDES...
    local name=$1 recipe=$2; shift 2
    run "$name" "$PYTHON" -m distill train "$recipe" "${COMMON[@]}" "$@" "output=$OUT_DIR/$name" --overwrite
}

for precision in "${PRECISIONS[@]}"; do
    for method in kd crd; do
        train "fashion_mnist-$method-$precision" "fashion_mnist/$method" "${SIZES[@]}" \
            "train.precision=$precision" "${FAST[@]}"
    done
    if "$PYTHON" -c "import ultralytics" 2>/dev/null; then
        train "scenes-kd-$precision" scenes/kd "${SCENES[@]}" train.batch_size=8 \
            "train.precision=$precision" "${FAST[@]}"
    else
        printf '%s\t%s\t\t\n' "scenes-kd-$precision" "skipped (ultralytics is not importable)" >>"$RESULTS"
        echo "== scenes-kd-$precision: skipped (ultralytics is not importable)"
    fi
done

# two processes: on two GPUs (NCCL), or on the CPU (gloo) so that this line is tested too
GPUS=0
if [ "$DEVICE" = cuda ]; then GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0); fi
if [ "$GPUS" -gt 1 ] || [ "$DEVICE" = cpu ]; then
    run fashion_mnist-kd-ddp2 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 \
        -m distill train fashion_mnist/kd "${COMMON[@]}" "${SIZES[@]}" "train.precision=${PRECISIONS[0]}" "${FAST[@]}" \
        "output=$OUT_DIR/fashion_mnist-kd-ddp2" --overwrite
else
    printf '%s\t%s\t\t\n' fashion_mnist-kd-ddp2 "skipped ($GPUS GPUs; DDP needs 2)" >>"$RESULTS"
fi

run throughput "$PYTHON" benchmarks/throughput.py --device "$DEVICE" "${BENCH[@]}" --write "$OUT_DIR/throughput.md"

"$PYTHON" - "$RESULTS" "$SUMMARY" "$DEVICE" <<'PY'
"""Write the Markdown summary from results.tsv and each run's summary.json / metrics.jsonl."""
import json
import platform
import sys
from pathlib import Path

import torch

results, summary, device = sys.argv[1:4]


def last_rate(run_dir: Path) -> str:
    rates = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "train" and "samples_per_s" in record:
                rates.append(record["samples_per_s"])
    return f"{rates[-1]:.0f}" if rates else ""


def final_metric(run_dir: Path) -> str:
    path = run_dir / "summary.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    key = data.get("primary_metric", "top1")
    value = (data.get("last") or {}).get(key)
    return f"{key} {value:.2f}" if isinstance(value, (int, float)) else ""


if device == "cuda" and torch.cuda.is_available():
    card = torch.cuda.get_device_name(0)
    gpus = torch.cuda.device_count()
else:
    card, gpus = f"CPU ({platform.processor() or platform.machine()})", 0
lines = [
    "# distill GPU check",
    "",
    f"- device: {device}, {card}" + (f" ({gpus} GPUs)" if gpus > 1 else ""),
    f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}",
    "",
    "| run | status | wall s | final metric | samples/s |",
    "|---|---|---|---|---|",
]
for row in Path(results).read_text().splitlines():
    name, status, wall, run_dir = row.split("\t")
    metric = rate = ""
    if run_dir and name != "throughput":
        metric, rate = final_metric(Path(run_dir)), last_rate(Path(run_dir))
    lines.append(f"| {name} | {status} | {wall} | {metric} | {rate} |")
bench = Path(results).parent / "throughput.md"
if bench.is_file():
    lines += ["", "## benchmarks/throughput.py", "", *bench.read_text().splitlines()[4:]]
Path(summary).write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "summary: $SUMMARY"
! grep -q "	failed" "$RESULTS"
