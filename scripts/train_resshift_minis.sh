#!/usr/bin/env bash
# Train the bundled ResShift / SinSR minis end to end: pack -> vqf4-mini -> resshift-mini -> sinsr-mini
# -> bundles + model cards in assets/weights/ -> `sr_core eval` (Set5/Set14/BSD100) and `sr_core bench`.
#
#   scripts/train_resshift_minis.sh            # GPU (one H100: 24 min of training + ~3 min evals)
#   DEVICE=cpu THREADS=2 scripts/train_resshift_minis.sh
#                                              # CPU variant: batch 16 / 8 / 4 / 16, bf16, 30 + 55 + 28 + 70 min budgets
#                                              # (BUDGET_*) -- what produced the bundled minis (see their
#                                              # cards; they had PACK=packs/train_x4_s256_n320.npz, 320
#                                              # crops); expect undertrained minis -- a GPU is the real route
#   STAGES=vq,rs,sin scripts/train_resshift_minis.sh
#                                              # a subset (vq, rs, sin, adapt, dec, export, pix, eval,
#                                              # bench); on a lent GPU machine use scripts/device.sh,
#                                              # which runs the training stages there within its limits
#                                              # and the rest here
#
# Knobs (environment): DEVICE (auto|cuda|cpu), BATCH_SCALE (GPU: batch x K, lr x sqrt K; default 4), PACK (built if missing, PACK_CROPS crops), RUNS, STAGES, BUDGET_VQ / BUDGET_RS / BUDGET_SIN / BUDGET_ADAPT (minutes
# per stage; the trainer stops at the budget and anneals its LR over max(step/max_steps, time/budget)),
# PIX_STEPS / PIX_RS / CHAIN_CROPS / EXTRA_PIX (stage pix, see there),
# THREADS (CPU threads), INIT_FROM (warm start, see below), BUDGET_DEC (stage dec, default BUDGET_VQ: a
# decoder fine-tune of the bundles' autoencoder that keeps their latent space, swapped in by `redecode`), PY (python), EXTRA_VQ / EXTRA_RS / EXTRA_SIN / EXTRA_ADAPT (more `--set key=value` args),
# EVAL_LIMIT (images per eval set; 0 = all), ASSETS (bundle root, default assets/weights; the
# `sr_core eval/bench` calls read the default location).
#
# GPU budgets: 5 + 8 + 7 + 4 min of training (+ ~3 min export/eval).  The time budget is what ends each
# stage (the trainer anneals its LR over max(step/max_steps, time/budget)); max_steps 20000 / 10000 /
# 3000 are what the budgets should allow on one H100 (bf16).  Estimate behind it (measured FLOPs,
# assumed H100 throughput): the mini UNet is 11.9 GFLOP per 32x32 latent forward and the autoencoder
# 1.9 GFLOP per 128x128 image (encode + decode); a resshift-mini step (batch 64, LR 32) is ~2.4 TFLOP,
# a sinsr-mini step ~19 TFLOP (15 teacher calls + 4 student calls + 3 backward), a vqf4-mini step
# (batch 32, HR 128) ~0.2 TFLOP; at ~250 TFLOP/s effective plus ~5 us per kernel launch that is
# ~30 ms, ~130 ms and ~10 ms per step, i.e. 10000 resshift steps in ~5 min and ~3000 sinsr steps in
# ~7 min.  Measured on CPU (one thread of this project's 2-core machine, under load): 0.5 s (vqf4),
# 2.7 s (resshift) and 20 s (sinsr) per step at batch 4, HR 128 -- sinsr ~7x resshift per step.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-python}
DEVICE=${DEVICE:-auto}
# every training image's worth of crops (the bundled minis had the 320-crop pack and overfit it: the held-out x0-MSE
# of resshift-mini continued on these 1000 crops fell 3.5x as much as on those 320, in the same steps)
PACK=${PACK:-packs/train_x4_s256_n1000_webp.npz}
RUNS=${RUNS:-runs}
STAGES=${STAGES:-vq,rs,sin,adapt,export,pix,eval,bench}
THREADS=${THREADS:-}
EVAL_LIMIT=${EVAL_LIMIT:-0}
ASSETS=${ASSETS:-assets/weights}
if [ "$DEVICE" = "cpu" ]; then
  BUDGET_VQ=${BUDGET_VQ:-30}; BUDGET_RS=${BUDGET_RS:-55}; BUDGET_SIN=${BUDGET_SIN:-28}; BUDGET_ADAPT=${BUDGET_ADAPT:-70}
  # CPU: smaller batches, same recipes (the bundled minis' run; its SinSR stage ran on 1 thread beside
  # the teacher's evaluation)
  CPU_VQ=(--set batch_size=16); CPU_RS=(--set batch_size=8 --set warmup_steps=100 --set val_every=1500)
  CPU_SIN=(--set batch_size=4 --set warmup_steps=20 --set val_every=0); CPU_ADAPT=(--set batch_size=16)
  CPU_PIX=(--set batch_size=8)
else
  BUDGET_VQ=${BUDGET_VQ:-5}; BUDGET_RS=${BUDGET_RS:-8}; BUDGET_SIN=${BUDGET_SIN:-7}; BUDGET_ADAPT=${BUDGET_ADAPT:-4}
  # GPU: batch x BATCH_SCALE (default 4; lr x its square root).  The first lent H200 run (2026-11-30, recipe
  # batches) trained at 6 it/s (resshift-mini, batch 64) and 1 it/s (sinsr-mini): a few percent of the
  # FLOPs the recipes allow -- the step is bound by ~10^4 kernel launches (`python -m sr_core.training
  # profile RECIPE` counts them), so a larger batch costs little more time per step.  Not yet measured at
  # x4: the first call of a lent session can check it with `profile RECIPE --device cuda --random-sources`.
  G=(--batch-scale "${BATCH_SCALE:-4}"); CPU_VQ=("${G[@]}"); CPU_RS=("${G[@]}"); CPU_SIN=("${G[@]}"); CPU_ADAPT=(--set batch_size=64 "${G[@]}")
  CPU_PIX=(--set batch_size=32)
fi
THREAD_ARGS=()
[ -n "$THREADS" ] && THREAD_ARGS=(--threads "$THREADS")
# COMPILE=1: every stage computes its loss through torch.compile (the trainer's --compile; the first step
# compiles, minutes on a CPU, inside the stage's budget).  Measured on this CPU (`profile resshift-mini`,
# batch 8, 2 threads): 1.83 -> 1.09 s a step, but mini-sd only 1.3x, stablesr-mini slower (0.83x) and
# osediff-mini and sinsr-mini compile for > 7 min (README); not yet measured on a GPU, where the eager step
# is launch-bound
[ "${COMPILE:-0}" = 1 ] && THREAD_ARGS+=(--compile)
# warm start: INIT_FROM=a resshift-mini bundle or run -> vqf4-mini continues from its autoencoder and
# resshift-mini from its UNet (a lent GPU's minutes then build on the bundled weights instead of
# restarting), at WARM_LR x the learning rate (default 0.5: the CPU continuation of vqf4-mini from the
# bundle at half its lr gained 0.5 dB of round trip in 45 min), and sinsr-mini's student from SIN_INIT_FROM
# (default: the sinsr-mini folder beside INIT_FROM, when there is one) instead of from the teacher
INIT_VQ=(); INIT_RS=(); INIT_SIN=()
if [ -n "${INIT_FROM:-}" ]; then
  INIT_VQ=(--set "init_from=$INIT_FROM" --lr-scale "${WARM_LR:-0.5}"); INIT_RS=(--set "init_from=$INIT_FROM" --lr-scale "${WARM_LR:-0.5}")
  SIN_INIT_FROM=${SIN_INIT_FROM:-$(dirname "$INIT_FROM")/sinsr-mini}
  if [ -f "$SIN_INIT_FROM/model.safetensors" ] || [ -f "$SIN_INIT_FROM/ckpt/last.pt" ]; then
    INIT_SIN=(--set "init_from=$SIN_INIT_FROM" --lr-scale "${WARM_LR:-0.5}")
  fi
fi
TRAIN=("$PY" -m sr_core.training)   # the kit's CLI; recipes_resshift registers these recipes
RR=("$PY" -m sr_core.training.resshift_cli)
has() { [[ ",$STAGES," == *",$1,"* ]]; }

if [ ! -f "$PACK" ]; then
  echo "== building the training pack $PACK (../shared/data/train/*)"
  "$PY" -m sr_core.training pack --out "$PACK" --n-crops "${PACK_CROPS:-1000}" --codec webp --max-mib 100
fi

if has vq; then
  echo "== stage 1: vqf4-mini"
  "${TRAIN[@]}" vqf4-mini --pack "$PACK" --out "$RUNS/vqf4-mini" --device "$DEVICE" --no-val \
    --time-budget "$BUDGET_VQ" "${THREAD_ARGS[@]}" "${CPU_VQ[@]}" "${INIT_VQ[@]}" ${EXTRA_VQ:-}
fi
if has rs; then
  echo "== stage 2: resshift-mini (frozen vqf4-mini)"
  "${TRAIN[@]}" resshift-mini --pack "$PACK" --out "$RUNS/resshift-mini" --device "$DEVICE" \
    --set ae_from="$RUNS/vqf4-mini" --time-budget "$BUDGET_RS" "${THREAD_ARGS[@]}" "${CPU_RS[@]}" "${INIT_RS[@]}" \
    ${EXTRA_RS:-}
fi
if has sin; then
  echo "== stage 3: sinsr-mini (distilled from resshift-mini)"
  "${TRAIN[@]}" sinsr-mini --pack "$PACK" --out "$RUNS/sinsr-mini" --device "$DEVICE" \
    --set teacher_from="$RUNS/resshift-mini" --time-budget "$BUDGET_SIN" "${THREAD_ARGS[@]}" "${CPU_SIN[@]}" \
    "${INIT_SIN[@]}" ${EXTRA_SIN:-}
fi

if has adapt; then
  # each mini's decoder learns from the latents its own UNet samples (train=decoder_sr: the sampler it serves
  # with, loss after its colour fix; encoder and codebook frozen, so the UNets are untouched); the export
  # stage swaps them in with `redecode`.  Measured on the CPU (sinsr-mini, 25 min, 1000 steps of batch 16):
  # +0.33 dB on the first 30 BSD100 images.  BUDGET_ADAPT (minutes) is split between the two.
  for m in resshift-mini sinsr-mini; do
    echo "== stage 4: the decoder of $m on its UNet's own latents"
    "${TRAIN[@]}" vqf4-mini --pack "$PACK" --out "$RUNS/dec-$m" --device "$DEVICE" --no-val \
      --set train=decoder_sr --set init_from="$RUNS/$m" --set lr=1e-4 --set lr_min=1e-5 --set warmup_steps=50 \
      --set ema_decay=0.995 --time-budget "$("$PY" -c "import sys; print(float(sys.argv[1]) / 2)" "$BUDGET_ADAPT")" \
      "${THREAD_ARGS[@]}" "${CPU_ADAPT[@]}" ${EXTRA_ADAPT:-}
  done
fi

if has dec; then
  # not in the default STAGES: a better decoder for the bundles' autoencoder, trained after the UNets
  # (train=decoder: encoder + codebook frozen, so the UNets' latent space is unchanged), then swapped into
  # both bundles with `redecode` (which checks that latent space and re-measures the cards' figures).
  # Measured on the CPU (55 min): round trip BSD100 27.17 -> 27.26 dB, but resshift-mini 26.09 -> 26.04 and
  # sinsr-mini 26.00 -> 25.95 (Set5/Set14 rose): not adopted -- check BSD100 before keeping a new decoder
  echo "== decoder fine-tune of $ASSETS/resshift-mini's autoencoder, then redecode both bundles"
  "${TRAIN[@]}" vqf4-mini --pack "$PACK" --out "$RUNS/vqf4-dec" --device "$DEVICE" --no-val \
    --set train=decoder --set init_from="$ASSETS/resshift-mini" --lr-scale "${WARM_LR:-0.5}" \
    --time-budget "${BUDGET_DEC:-$BUDGET_VQ}" "${THREAD_ARGS[@]}" "${CPU_VQ[@]}" ${EXTRA_DEC:-}
  for m in resshift-mini sinsr-mini; do
    "${RR[@]}" redecode "$ASSETS/$m" --decoder-from "$RUNS/vqf4-dec" --device "$DEVICE" --eval-limit "$EVAL_LIMIT" \
      | tee "$RUNS/vqf4-dec/redecode_$m.json"
  done
fi

if has export; then
  echo "== the autoencoder's round trip (the ceiling of both minis), then export: assets/weights/{resshift-mini,sinsr-mini} + model cards"
  "${RR[@]}" recon "$RUNS/vqf4-mini" --sets Set5,Set14,BSD100 | tee "$RUNS/vqf4-mini/recon.json"
  for m in resshift-mini sinsr-mini; do
    if [ -f "$RUNS/dec-$m/ckpt/last.pt" ]; then  # its adapted decoder (stage adapt) goes in; measured once, after
      "${RR[@]}" export "$RUNS/$m" --assets "$ASSETS" --device "$DEVICE" --no-eval | tee "$RUNS/$m/export.json"
      "${RR[@]}" redecode "$ASSETS/$m" --decoder-from "$RUNS/dec-$m" --device "$DEVICE" --eval-limit "$EVAL_LIMIT" \
        | tee "$RUNS/dec-$m/redecode.json"
    else
      "${RR[@]}" export "$RUNS/$m" --assets "$ASSETS" --device "$DEVICE" --eval-limit "$EVAL_LIMIT" | tee "$RUNS/$m/export.json"
    fi
  done
fi

if has pix; then
  # ours, after the bundles exist (not in the paper): each mini's UNet fine-tuned on the pixel MSE of what it
  # serves (`w_pixel`: its latent decoded by the bundle's frozen decoder and colour-fixed, straight through the
  # quantiser), then exported over its bundle (the card keeps the lineage).
  # resshift-mini (PIX_RS=1, the default): `chain-pack` runs its stochastic sampler once on CHAIN_CROPS crops of
  # the pack and keeps the state each reaches at the last step; the UNet's t = 0 output from those states -- the
  # output the method serves -- is what the term scores (pixel_on=last_step; ResShift's latent loss off).
  # Measured on the CPU (chain-pack: 400 crops in 38 min; then 200 steps of batch 8 in 5.5 min, 2 threads, lr 2e-5
  # annealed): the first 20 BSD100 images 27.146 -> 27.226 dB (a scratch run of the same: 27.234 after 100 steps,
  # 27.242 after 200, and its held-out crops peaked at 200 steps, falling after).  (The same term on the x0
  # prediction at a random t of the forward process, beside ResShift's loss -- pixel_on=x0 -- moved them 0.03 dB
  # in 618 steps: there the UNet only denoises a draw around the ground truth, not the sampler's own states.)
  # sinsr-mini: its one-step latent from x_T (SinSR's three losses weighted 0: it is already distilled; no teacher
  # calls).  Measured on the CPU: 200 steps (9 min) took the first 20 BSD100 images 27.11 -> 27.22 dB; at a
  # constant lr the gain peaked at 125-200 steps and then fell (26.22 dB after 800), hence PIX_STEPS.
  # A second round straight after the first (no other training between) lowered those 20 images (resshift-mini
  # 27.226 -> 27.145 with a fresh chain-pack; sinsr-mini 27.236 -> 27.12-27.17 however run; the cards' targets).
  echo "== stage pix: the bundles' UNets fine-tuned on the pixel MSE of what they serve"
  PIX=(--set lr=2e-5 --set lr_min=2e-6 --set warmup_steps=10 --set ema_decay=0.99 --set val_every=0 --no-val)
  PIX_MODELS=(sinsr-mini)
  if [ "${PIX_RS:-1}" = 1 ]; then
    PIX_MODELS=(resshift-mini sinsr-mini)
    "${RR[@]}" chain-pack "$ASSETS/resshift-mini" --pack "$PACK" --out "$RUNS/chain_resshift-mini.npz" \
      --crops "${CHAIN_CROPS:-400}" --device "$DEVICE" "${THREAD_ARGS[@]}"
    "${TRAIN[@]}" resshift-mini --pack "$RUNS/chain_resshift-mini.npz" --out "$RUNS/resshift-mini-pix" \
      --device "$DEVICE" "${PIX[@]}" --set ae_from="$ASSETS/resshift-mini" --set init_from="$ASSETS/resshift-mini" \
      --set w_pixel=1 --set pixel_on=last_step --set w_latent=0 --max-steps "${PIX_STEPS:-200}" \
      "${THREAD_ARGS[@]}" "${CPU_PIX[@]}" ${EXTRA_PIX:-}
  fi
  "${TRAIN[@]}" sinsr-mini --pack "$PACK" --out "$RUNS/sinsr-mini-pix" --device "$DEVICE" "${PIX[@]}" \
    --set teacher_from="$ASSETS/resshift-mini" --set init_from="$ASSETS/sinsr-mini" --set w_pixel=1 \
    --set w_distill=0 --set w_inverse=0 --set w_gt=0 --max-steps "${PIX_STEPS:-200}" \
    "${THREAD_ARGS[@]}" "${CPU_PIX[@]}" ${EXTRA_PIX:-}
  for m in "${PIX_MODELS[@]}"; do
    "${RR[@]}" export "$RUNS/$m-pix" --assets "$ASSETS" --device "$DEVICE" --eval-limit "$EVAL_LIMIT" \
      | tee "$RUNS/$m-pix/export.json"
  done
fi

if has eval; then
  echo "== sr_core eval (benchmark protocol)"
  # `sr_core eval/bench --method resshift-mini|sinsr-mini` need the two ids in the default registry
  # (sr_core/registry.py); the export above already ran the same protocol through the method.
  for m in resshift-mini sinsr-mini; do
    for s in Set5 Set14 BSD100; do
      LIM=(); [ "$EVAL_LIMIT" != "0" ] && LIM=(--limit "$EVAL_LIMIT")
      "$PY" -m sr_core eval --method "$m" --hr "../shared/data/eval/$s/HR" --device "$DEVICE" "${LIM[@]}" \
        --json "$RUNS/$m/eval_$s.json" | tail -2 || echo "(sr_core eval --method $m failed: is $m registered?)"
    done
  done
fi
if has bench; then
  # speed on CPU (what the app runs), both minis in one process, interleaved:
  "${RR[@]}" bench --resshift "$ASSETS/resshift-mini" --sinsr "$ASSETS/sinsr-mini" --sizes 64,128 --device cpu | tee "$RUNS/bench_minis_cpu.json"
  for m in resshift-mini sinsr-mini; do
    "$PY" -m sr_core bench --method "$m" --sizes 64,128 --device cpu || true
  done
fi
echo "done: $ASSETS/resshift-mini, $ASSETS/sinsr-mini; logs in $RUNS/"
