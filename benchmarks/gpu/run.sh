#!/usr/bin/env bash
# One command that proves robaudit's CUDA paths and measures them (issue 16; benchmarks/README.md, "GPU").
#
#   bash benchmarks/gpu/run.sh [--out DIR] [--cpu-smoke]
#
# Needs only this repository and its virtualenv (.venv, or $PYTHON): no network, no data root. Steps:
#   tests       tests/test_device.py, its CUDA half (pytest -m cuda; the CPU half with --cpu-smoke)
#   train       fine-tune pneumonia-mini_tf_efficientnet_lite0 (offline ImageNet weights, embedded data)
#   speed       ART UniversalPerturbation vs robaudit batched fgsm/sgd: time to ART's best test fooling rate
#   throughput  fgsm UAP loop vs the model's own forward+backward (resnet50 @ 224 px, fp32 and --amp)
#   stream      a generated JPEG folder decoded by DataLoader workers, and a UAP built over it
#   paper       a slice of the paper recipe: robaudit audit --recipe <generated> --train-missing
#   summary     results.json + results.md in DIR; exit 1 if any check failed
# Exit codes: 0 all checks passed, 1 a check failed, 2 bad usage, 3 no CUDA (without --cpu-smoke).
# The GPU profile targets < 8 minutes on one H100; --cpu-smoke runs the same steps, tiny, on 2 CPU cores.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT="" SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#--out=}; shift ;;
        --cpu-smoke) SMOKE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

PY=${PYTHON:-$REPO/.venv/bin/python}
if ! [ -x "$PY" ]; then
    echo "run.sh: no Python at $PY: create the virtualenv (make install) or set PYTHON" >&2
    exit 2
fi
if [ -z "$OUT" ]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/robaudit-gpu.XXXXXX")
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# isolated and offline: a model store under DIR, no data root, no hub downloads
export ROBAUDIT_HOME="$OUT/home" HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset ROBAUDIT_DATA WORLD_SIZE RANK LOCAL_RANK MASTER_ADDR MASTER_PORT
# per-step caps (seconds): a hung step (an NCCL or Ray wait) costs its cap, not the whole run
if [ "$SMOKE" = 1 ]; then
    PROFILE=smoke MARK="device and not cuda"
    CAP_tests=300 CAP_train=60 CAP_speed=90 CAP_throughput=60 CAP_stream=60 CAP_paper=120
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # a shared 2-core box: threads would fight
else
    PROFILE=gpu MARK="cuda"
    CAP_tests=270 CAP_train=150 CAP_speed=240 CAP_throughput=150 CAP_stream=150 CAP_paper=330
fi
cd "$REPO"
: > "$OUT/steps.tsv"
echo "robaudit GPU check, profile $PROFILE, results in $OUT"

if [ "$SMOKE" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "run.sh: CUDA is not available to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)'))." >&2
    echo "run.sh: run it on a GPU machine, or pass --cpu-smoke for the CPU rehearsal." >&2
    "$PY" "$HERE/bench.py" summary --profile gpu --out "$OUT" > /dev/null || true
    exit 3
fi
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true

# step NAME CMD...: run CMD (capped at CAP_NAME s) with its output in DIR/NAME.log, record exit code and wall
# seconds, carry on
step() {
    local name=$1 rc=0 t0 t1 cap
    shift
    cap=CAP_$name
    t0=$(date +%s.%N)
    timeout --kill-after=15 "${!cap}" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then
        echo "run.sh: step $name ran past its cap of ${!cap} s and was stopped" >> "$OUT/$name.log"
    fi
    t1=$(date +%s.%N)
    local secs
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$OUT/steps.tsv"
    if [ "$rc" = 0 ]; then
        echo "  $name: ok, ${secs} s"
    else
        echo "  $name: FAILED (exit $rc), ${secs} s; last lines of $OUT/$name.log:"
        tail -n 25 "$OUT/$name.log" | sed 's/^/    /'
    fi
}

# ROBAUDIT_SMOKE_TESTS (a pytest -k expression) narrows the tests step: the suite's smoke test sets it, since
# the suite itself runs all of test_device.py's CPU half
step tests "$PY" -m pytest tests/test_device.py -m "$MARK" ${ROBAUDIT_SMOKE_TESTS:+-k "$ROBAUDIT_SMOKE_TESTS"} \
    --noconftest -p no:cacheprovider -q --junitxml "$OUT/tests.xml"
for s in train speed throughput stream paper; do
    step "$s" "$PY" "$HERE/bench.py" "$s" --profile "$PROFILE" --out "$OUT"
done

rc=0
"$PY" "$HERE/bench.py" summary --profile "$PROFILE" --out "$OUT" > "$OUT/summary.log" 2>&1 || rc=$?
tail -n 12 "$OUT/results.md" 2>/dev/null || cat "$OUT/summary.log"
echo "results: $OUT/results.json and $OUT/results.md"
exit "$rc"
