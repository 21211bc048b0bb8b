#!/usr/bin/env bash
# Train mini-sd and osediff-mini end to end: pack -> mini-sd-vae -> mini-sd -> osediff-mini -> folders +
# model cards in assets/weights/{mini-sd,osediff-mini} -> `sr_core eval` (Set5/Set14/BSD100) -> `sr_core
# bench` osediff-mini vs resshift-mini (CPU, LR 256 -> 1024; the issue's target is >= 10x faster).
#
#   scripts/train_sd_minis.sh                  # GPU (one H100: 5 + 7 + 7 min of training + ~3 min export/eval)
#   DEVICE=cpu THREADS=2 scripts/train_sd_minis.sh
#                                              # CPU variant: the settings of the bundled CPU-trained minis,
#                                              # 55 + 16 + 50 min (BUDGET_*); undertrained -- a GPU is the route
#   STAGES=vae,sd scripts/train_sd_minis.sh    # a subset (vae, sd, ose, export, eval, bench)
#   scripts/device.sh prep sd                  # on a lent GPU machine (a few minutes, a 64 MiB tree, <= 8
#                                              # files back): device.sh runs the training stages there and
#                                              # export/eval/bench here (see its header)
#
# Knobs (environment): DEVICE (auto|cuda|cpu), BATCH_SCALE (GPU: batch x K, lr x sqrt K; default 4), PACK, RUNS, STAGES, BUDGET_VAE / BUDGET_SD / BUDGET_OSE
# (minutes per stage; the trainer stops at the budget and anneals its LR over max(step/max_steps,
# time/budget)), THREADS, INIT_FROM (warm start, see below), PY, EXTRA_VAE / EXTRA_SD / EXTRA_OSE (more `--set key=value` args, e.g.
# EXTRA_OSE="--set lambda_lpips=2 --set lambda_vsd=1" for the paper's weights or "--set
# degradation.realesrgan=1" for its real-world degradations), EVAL_LIMIT (images per eval set; 0 = all),
# EVAL_ROOT (default ../shared/data/eval; export/eval are skipped for sets that are absent), ASSETS
# (folder root, default assets/weights; `sr_core eval/bench` read the default location), WHEELS (folder
# of wheels installed with --no-index when an import is missing, default .whl).
#
# What the lent GPU machine needs (its python has torch/accelerate/peft/safetensors/einops):
# - wheels in .whl/ (git-ignored; carry it): diffusers==0.42.1 and whichever of its pure dependencies
#   are absent there (importlib_metadata, zipp, regex, filelock, requests, Pillow, huggingface_hub).
#   Our mini path needs no transformers of its own (no text_encoder/ in these folders; OSEDiffModel
#   imports it only for prompts), but peft and diffusers import transformers when it is installed and
#   peft requires it, so add transformers==5.23.0 (+ tokenizers) only if `import peft` fails there.
# - the pack (packs/train_x4_s256_n320.npz, 48 MiB; carry it: ../shared is not on that machine), and
#   the LPIPS weights: SR_LPIPS_WEIGHTS=/path/alex_shift_tolerant.pth (9.9 MB, from the stlpips-pytorch
#   wheel: `unzip -j stlpips_pytorch-0.0.2-py3-none-any.whl '*/alex_shift_tolerant.pth' -d packs/`), or
#   `pip install --no-deps` that wheel.  With no weights, pass EXTRA_VAE/EXTRA_OSE="--set lambda_lpips=0".
# - eval images are not there either: run STAGES=vae,sd,ose there (and `export` with EVAL_ROOT unset ->
#   figures skipped), bring runs/ back, and run STAGES=export,eval,bench here (CPU), or carry Set5/Set14.
#
# Step costs (measured: FLOPs with torch.utils.flop_counter on one forward+backward at the recipes'
# sizes, HR 256 px; CPU seconds per step at batch 4, one thread of this project's 2-core machine under
# load, random weights, LPIPS at full width) -- measured on the first, wider mini-sd config (UNet
# 64/128/256/256 x2 layers, VAE 32/64/128/128 x2): mini-sd-vae 206 GFLOP/sample, 11.6 s/step;
# mini-sd 37 GFLOP/sample, 1.6 s/step; osediff-mini 198 GFLOP/sample, 13.2 s/step.  The config was then
# shrunk to UNet 32/64/128/128 x1 (5.9 M) and VAE 16/32/64/64 x1 without mid attention (0.95 M) for the
# bundle size and the CPU speed target (at 256 -> 1024 under load: VAE decode 4.0 s, encode 1.6 s, UNet
# 2.1 s with 2 threads), so these step costs are upper bounds (~3-4x lower now).
# GPU estimate (one H100, bf16, assuming ~150 TFLOP/s effective on these small convolutions plus
# ~10-30 ms of kernel-launch overhead per step for the many small diffusers modules): mini-sd-vae batch
# 32 = 6.6 TFLOP -> ~60 ms/step (5 min ~ 5000 steps); mini-sd batch 64 = 2.4 TFLOP -> ~30 ms/step
# (7 min ~ 14000 steps); osediff-mini batch 16 = 3.2 TFLOP -> ~50 ms/step (7 min ~ 8000
# steps).  The recipes' max_steps (20000 / 30000 / 10000) are upper bounds; the budgets end each stage.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
DEVICE=${DEVICE:-auto}
PACK=${PACK:-packs/train_x4_s256_n320.npz}
RUNS=${RUNS:-runs}
STAGES=${STAGES:-vae,sd,ose,export,eval,bench}
THREADS=${THREADS:-}
EVAL_LIMIT=${EVAL_LIMIT:-0}
EVAL_ROOT=${EVAL_ROOT:-../shared/data/eval}
ASSETS=${ASSETS:-assets/weights}
WHEELS=${WHEELS:-.whl}
if [ "$DEVICE" = "cpu" ]; then
  # the settings of the bundled CPU minis (their cards list every run of their lineage; 2 cores: vae and sd
  # with THREADS=2, ose with THREADS=1 while scripts/train_stablesr_mini.sh trained beside it on the other
  # core): HR 128 crops, L1 + KL only for the VAE (LPIPS at full resolution would cost most of its time),
  # LoRA rank 16 for the short generator run.
  # The generator at the recipe's HR 256 crops (32 x 32 latents), not 128: trained on 16 x 16 latents it ran
  # whole images off colour (BSD100, 30 images: 25.26 dB; 65 min more at 256 crops: 25.63)
  BUDGET_VAE=${BUDGET_VAE:-55}; BUDGET_SD=${BUDGET_SD:-16}; BUDGET_OSE=${BUDGET_OSE:-50}
  CPU_VAE=(--set batch_size=16 --set patch_lr=32 --set lambda_lpips=0 --set lr=5e-4 --set betas=0.9,0.99
           --set warmup_steps=100 --set lr_min=1e-5)
  CPU_SD=(--set batch_size=16 --set patch_lr=32 --set lr=2e-4 --set warmup_steps=100)
  CPU_OSE=(--set batch_size=4 --set patch_lr=64 --set lora_rank=16 --set lr=3e-4 --set warmup_steps=50
           --set val_every=0)
else
  BUDGET_VAE=${BUDGET_VAE:-5}; BUDGET_SD=${BUDGET_SD:-7}; BUDGET_OSE=${BUDGET_OSE:-7}
  # GPU: batch x BATCH_SCALE (default 4; lr x its square root).  The first lent H200 run (2026-11-30, recipe
  # batches) trained at 6 it/s (resshift-mini, batch 64) and 1 it/s (sinsr-mini): a few percent of the
  # FLOPs the recipes allow -- the step is bound by ~10^4 kernel launches (`python -m sr_core.training
  # profile RECIPE` counts them), so a larger batch costs little more time per step.  Not yet measured at
  # x4: the first call of a lent session can check it with `profile RECIPE --device cuda --random-sources`.
  G=(--batch-scale "${BATCH_SCALE:-4}"); CPU_VAE=("${G[@]}"); CPU_SD=("${G[@]}"); CPU_OSE=("${G[@]}")
fi
THREAD_ARGS=()
[ -n "$THREADS" ] && THREAD_ARGS=(--threads "$THREADS")
[ "${COMPILE:-0}" = 1 ] && THREAD_ARGS+=(--compile)  # torch.compile'd loss (see train_resshift_minis.sh)
# warm start: INIT_FROM=a mini-sd folder or run -> mini-sd-vae continues from its VAE and mini-sd from its UNet,
# and osediff-mini's generator from the LoRA + conv_in of OSE_INIT_FROM (default: the osediff-mini folder beside
# INIT_FROM, when there is one; its LoRA rank is read from the file; the fake score starts afresh), all at
# WARM_LR x the learning rate (default 0.5)
INIT_VAE=(); INIT_SD=(); INIT_OSE=()
if [ -n "${INIT_FROM:-}" ]; then
  INIT_VAE=(--set "init_from=$INIT_FROM" --lr-scale "${WARM_LR:-0.5}"); INIT_SD=(--set "init_from=$INIT_FROM" --lr-scale "${WARM_LR:-0.5}")
  OSE_INIT_FROM=${OSE_INIT_FROM:-$(dirname "$INIT_FROM")/osediff-mini}
  if [ -f "$OSE_INIT_FROM/osediff.safetensors" ]; then
    OSE_RANK=$("$PY" -c "import json, sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'pt'); print(json.loads(f.metadata()['osediff'])['rank_unet'])" "$OSE_INIT_FROM/osediff.safetensors")
    INIT_OSE=(--set "init_from=$OSE_INIT_FROM" --set "lora_rank=$OSE_RANK" --lr-scale "${WARM_LR:-0.5}")
  fi
fi
TRAIN=("$PY" -m sr_core.training)
has() { [[ ",$STAGES," == *",$1,"* ]]; }

# preflight: the libraries (installed from $WHEELS when missing) and the perceptual weights
if ! "$PY" -c "import diffusers, peft, accelerate, safetensors" 2>/dev/null; then
  if [ -d "$WHEELS" ]; then
    echo "== installing wheels from $WHEELS"
    "$PY" -m pip install --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  fi
  "$PY" -c "import diffusers, peft, accelerate, safetensors" || {
    echo "missing libraries: carry wheels of diffusers (and its absent dependencies) in $WHEELS/" >&2; exit 1; }
fi
if has vae || has ose; then
  "$PY" -c "from sr_core.training.perceptual import resolve_lpips_weights as r; print('LPIPS weights:', r())" || {
    [[ "${EXTRA_VAE:-}${EXTRA_OSE:-}" == *"lambda_lpips=0"* ]] || {
      echo "no LPIPS weights: set SR_LPIPS_WEIGHTS or pass --set lambda_lpips=0 in EXTRA_VAE/EXTRA_OSE" >&2; exit 1; }; }
fi

if [ ! -f "$PACK" ]; then
  echo "== building the training pack $PACK (../shared/data/train/*)"
  "$PY" -m sr_core.training pack --out "$PACK"
fi

if has vae; then
  echo "== stage 1: mini-sd-vae (AutoencoderKL, L1 + LPIPS + KL)"
  "${TRAIN[@]}" mini-sd-vae --pack "$PACK" --out "$RUNS/mini-sd-vae" --device "$DEVICE" --no-val \
    --time-budget "$BUDGET_VAE" "${THREAD_ARGS[@]}" "${CPU_VAE[@]}" "${INIT_VAE[@]}" ${EXTRA_VAE:-}
fi
if has sd; then
  echo "== stage 2: mini-sd (latent DDPM on the frozen mini-sd-vae)"
  "${TRAIN[@]}" mini-sd --pack "$PACK" --out "$RUNS/mini-sd" --device "$DEVICE" --no-val \
    --set vae_from="$RUNS/mini-sd-vae" --time-budget "$BUDGET_SD" "${THREAD_ARGS[@]}" "${CPU_SD[@]}" "${INIT_SD[@]}" \
    ${EXTRA_SD:-}
fi
if has ose; then
  echo "== stage 3: osediff-mini (LoRA generator, MSE + LPIPS + VSD on the frozen mini-sd)"
  "${TRAIN[@]}" osediff-mini --pack "$PACK" --out "$RUNS/osediff-mini" --device "$DEVICE" \
    --set prior_from="$RUNS/mini-sd" --time-budget "$BUDGET_OSE" "${THREAD_ARGS[@]}" "${CPU_OSE[@]}" "${INIT_OSE[@]}" \
    ${EXTRA_OSE:-}
fi

if has export; then
  echo "== export: $ASSETS/{mini-sd,osediff-mini} + model cards"
  EV=(--eval-limit "$EVAL_LIMIT"); [ -d "$EVAL_ROOT/BSD100/HR" ] || EV=(--no-eval)
  [ "$EVAL_ROOT" = "../shared/data/eval" ] || echo "(export figures read ../shared/data/eval; EVAL_ROOT is for eval)"
  "${TRAIN[@]}" export "$RUNS/mini-sd" --assets "$ASSETS" "${EV[@]}" | tee "$RUNS/mini-sd/export.json"
  "${TRAIN[@]}" export "$RUNS/osediff-mini" --assets "$ASSETS" "${EV[@]}" | tee "$RUNS/osediff-mini/export.json"
fi

if has eval; then
  echo "== sr_core eval --method osediff-mini (benchmark protocol)"
  for s in Set5 Set14 BSD100; do
    [ -d "$EVAL_ROOT/$s/HR" ] || { echo "($EVAL_ROOT/$s/HR absent: skipped)"; continue; }
    LIM=(); [ "$EVAL_LIMIT" != "0" ] && LIM=(--limit "$EVAL_LIMIT")
    "$PY" -m sr_core eval --method osediff-mini --hr "$EVAL_ROOT/$s/HR" --device "$DEVICE" "${LIM[@]}" \
      --json "$RUNS/osediff-mini/eval_$s.json" | tail -2
  done
fi

if has bench; then
  echo "== sr_core bench on CPU, LR 256 -> 1024: resshift-mini (15 steps) vs osediff-mini, one process, interleaved"
  if "$PY" -m sr_core methods | grep -q "resshift-mini"; then
    "$PY" -m sr_core bench --method resshift-mini,osediff-mini --sizes 256 --device cpu \
      --json "$RUNS/bench_resshift_vs_osediff_cpu.json"   # "x osediff-mini" is the issue's ratio (target >= 10x)
  else
    echo "(resshift-mini is not exported here: osediff-mini alone)"
    "$PY" -m sr_core bench --method osediff-mini --sizes 256 --device cpu --json "$RUNS/bench_osediff-mini_cpu.json"
  fi
fi
echo "done: $ASSETS/mini-sd, $ASSETS/osediff-mini; logs in $RUNS/"
